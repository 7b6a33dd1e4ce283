//! Flow-matching noise levels and samplers (method.md section 2). (STUB: to be implemented.)
