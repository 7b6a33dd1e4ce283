//! A restricted, non-executing reader of Python pickles: exactly what a PyTorch state dict
//! (`torch.save(model.state_dict())`) needs, and nothing that could run code.
//!
//! A pickle is a program for a small stack machine; Python's own unpickler resolves any
//! `module.name` it meets (`GLOBAL`) and calls it (`REDUCE`), which is how a pickle runs
//! `os.system`. This reader never imports or calls anything: it knows a fixed list of globals
//! ([`Global`]) and gives each a meaning here (an `OrderedDict` is a [`Value::Dict`],
//! `torch._utils._rebuild_tensor_v2` builds a [`TensorRef`]), and refuses every other global the
//! moment its opcode is read, before any later opcode could use it. Opcodes outside the list a
//! state dict uses (`INST`, `OBJ`, `NEWOBJ`, `EXT*`, text `PERSID`, ...) are refused too; every
//! error names the opcode or the global and its byte offset.
//!
//! Tensor *data* is not in the pickle: torch writes a persistent id
//! `('storage', torch.FloatStorage, key, location, numel)` for each storage, and the archive
//! holds the bytes under `data/<key>` ([`super::torch_file`] reads them).

use std::collections::HashMap;

use crate::{Error, Result};

/// The element type of a torch storage class (`torch.FloatStorage` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    /// From the class name in the `torch` module (`FloatStorage`, ...).
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// The storage class name in the `torch` module.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::F64 => "DoubleStorage",
            Self::F32 => "FloatStorage",
            Self::F16 => "HalfStorage",
            Self::BF16 => "BFloat16Storage",
            Self::I64 => "LongStorage",
            Self::I32 => "IntStorage",
            Self::I16 => "ShortStorage",
            Self::I8 => "CharStorage",
            Self::U8 => "ByteStorage",
            Self::Bool => "BoolStorage",
        }
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// The only globals a pickle may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`: called with no arguments, it is an empty dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: the tensor itself.
    RebuildParameter,
    /// `torch.<T>Storage`, only as the type inside a storage's persistent id.
    Storage(StorageDType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => StorageDType::from_class(class).map(Global::Storage),
            _ => None,
        }
    }
}

/// A tensor as the pickle describes it: a view into a storage of the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage's record name under `data/` in the archive.
    pub key: String,
    pub dtype: StorageDType,
    /// Elements in the whole storage.
    pub storage_numel: usize,
    /// Offset of the first element, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// A value of the restricted pickle language.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// A storage's persistent id, resolved.
    Storage {
        key: String,
        dtype: StorageDType,
        numel: usize,
    },
    Tensor(TensorRef),
}

/// Reads a pickle (protocols 2 to 5, the subset described in the module docs) into a [`Value`].
pub fn parse(bytes: &[u8]) -> Result<Value> {
    Machine::new(bytes).run()
}

fn bad(pos: usize, msg: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("pickle, byte {pos}: {msg}"))
}

/// An element of the machine's stack: a value or a MARK.
#[derive(Clone, Debug)]
enum Slot {
    Mark,
    Value(Value),
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for messages).
    op_pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Machine {
            bytes,
            pos: 0,
            op_pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        bad(self.op_pos, msg)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: {n} bytes wanted, {} left",
                    self.bytes.len() - self.pos
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A `\n`-terminated line (GLOBAL's module and name).
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("truncated: unterminated line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("line is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&self, b: &[u8]) -> Result<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::Value(v));
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.err("a MARK where a value was expected")),
            None => Err(self.err("stack underflow")),
        }
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(bad(self.op_pos, "a MARK where a value was expected")),
            None => Err(bad(self.op_pos, "stack underflow")),
        }
    }

    /// Pops everything above the topmost MARK (and the MARK).
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|s| match s {
                Slot::Value(v) => v,
                Slot::Mark => unreachable!("rposition found the topmost mark"),
            })
            .collect())
    }

    fn memo_get(&self, key: u32) -> Result<Value> {
        self.memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.err(format!("memo key {key} was never stored")))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let v = match self.stack.last() {
            Some(Slot::Value(v)) => v.clone(),
            _ => return Err(self.err("nothing to memoize")),
        };
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let p = self.u8()?;
                    if !(2..=5).contains(&p) {
                        return Err(self.err(format!("pickle protocol {p} is not supported")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.stack.push(Slot::Mark),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes does not fit in 64 bits")));
                    }
                    let mut a = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    a[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(a)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Value::Str(s));
                }
                b'U' => {
                    // SHORT_BINSTRING (protocol-2 `str` of Python 2; bytes here).
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b'}' => self.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Value::Dict(pairs));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top_mut()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.err("APPEND to something that is not a list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top_mut()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.err("APPENDS to something that is not a list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top_mut()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.err("SETITEM on something that is not a dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    match self.top_mut()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err(self.err("SETITEMS on something that is not a dict")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    // MEMOIZE: the next index.
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let v = self.memo_get(k)?;
                    self.push(v);
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.err("STACK_GLOBAL without two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent(pid)?;
                    self.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: torch pickles a state dict's `_metadata` attribute this way; the
                    // state is dropped (it carries module versions, no tensors).
                    let state = self.pop()?;
                    match (self.top_mut()?, state) {
                        (Value::Dict(_), Value::Dict(_) | Value::None) => {}
                        _ => {
                            return Err(self.err(
                                "BUILD is accepted only for a dict's attribute dict (state dict metadata)",
                            ))
                        }
                    }
                }
                other => {
                    return Err(self.err(format!(
                        "opcode {} is not allowed in a state dict",
                        opcode_name(other)
                    )))
                }
            }
        }
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if items.len() % 2 != 0 {
            return Err(self.err("an odd number of items for a dict"));
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        let g = Global::resolve(module, name).ok_or_else(|| {
            self.err(format!(
                "global `{module}.{name}` is not allowed (a state dict names only \
                 collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter \
                 and torch.*Storage); nothing was executed"
            ))
        })?;
        self.push(Value::Global(g));
        Ok(())
    }

    /// `('storage', torch.<T>Storage, key, location, numel)`.
    fn persistent(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(self.err("a persistent id that is not a tuple"));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel)]
                if tag == "storage" && *numel >= 0 =>
            {
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(self.err(format!("storage key `{key}` is not a record name")));
                }
                Ok(Value::Storage {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: *numel as usize,
                })
            }
            _ => Err(self.err(
                "a persistent id other than ('storage', torch.<T>Storage, key, location, numel)",
            )),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        let Value::Global(g) = callable else {
            return Err(self.err("REDUCE on something that is not an allowed global"));
        };
        match g {
            Global::OrderedDict => match args.as_slice() {
                [] => Ok(Value::Dict(Vec::new())),
                [Value::List(items)] if items.is_empty() => Ok(Value::Dict(Vec::new())),
                _ => Err(self.err("OrderedDict called with arguments")),
            },
            Global::RebuildParameter => match args.into_iter().next() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t)),
                _ => Err(self.err("_rebuild_parameter of something that is not a tensor")),
            },
            Global::RebuildTensorV2 => self.rebuild_tensor(args),
            Global::Storage(d) => Err(self.err(format!(
                "torch.{} may only appear in a persistent id",
                d.class_name()
            ))),
        }
    }

    fn rebuild_tensor(&self, args: Vec<Value>) -> Result<Value> {
        if !(6..=7).contains(&args.len()) {
            return Err(self.err(format!(
                "_rebuild_tensor_v2 with {} arguments (expected 6 or 7)",
                args.len()
            )));
        }
        let mut it = args.into_iter();
        let storage = it.next();
        let offset = it.next();
        let size = it.next();
        let stride = it.next();
        let Some(Value::Storage { key, dtype, numel }) = storage else {
            return Err(self.err("_rebuild_tensor_v2 without a storage"));
        };
        let offset = match offset {
            Some(Value::Int(o)) if o >= 0 => o as usize,
            _ => return Err(self.err("_rebuild_tensor_v2: bad storage offset")),
        };
        let dims = |v: Option<Value>, what: &str| -> Result<Vec<usize>> {
            match v {
                Some(Value::Tuple(items)) => items
                    .into_iter()
                    .map(|x| match x {
                        Value::Int(i) if i >= 0 => Ok(i as usize),
                        _ => Err(self.err(format!("_rebuild_tensor_v2: bad {what}"))),
                    })
                    .collect(),
                _ => Err(self.err(format!("_rebuild_tensor_v2: {what} is not a tuple"))),
            }
        };
        let shape = dims(size, "size")?;
        let stride = dims(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(self.err("_rebuild_tensor_v2: size and stride differ in length"));
        }
        Ok(Value::Tensor(TensorRef {
            key,
            dtype,
            storage_numel: numel,
            offset,
            shape,
            stride,
        }))
    }
}

/// A readable name for an opcode byte in messages.
fn opcode_name(op: u8) -> String {
    let name = match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82..=0x84 => "EXT",
        b'P' => "PERSID",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return format!("0x{op:02x}"),
    };
    format!("{name} (0x{op:02x})")
}

/// Writes a pickle (protocol 2, the opcodes [`parse`] accepts) of an `OrderedDict` from names to
/// tensors whose storages are `data/<index>` records, as `torch.save` lays one out.
pub(crate) struct StateDictPickler {
    out: Vec<u8>,
}

impl StateDictPickler {
    pub(crate) fn new() -> Self {
        let mut out = vec![0x80, 2];
        out.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
        StateDictPickler { out }
    }

    fn int(&mut self, v: usize) {
        if let Ok(v) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.out.push(0x8a);
            self.out.push(8);
            self.out.extend_from_slice(&(v as u64).to_le_bytes());
        }
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn dims(&mut self, d: &[usize]) {
        self.out.push(b'(');
        for &x in d {
            self.int(x);
        }
        self.out.push(b't');
    }

    /// One entry: `name` -> a contiguous tensor of `shape` over storage `data/<key>`.
    pub(crate) fn tensor(&mut self, name: &str, key: usize, dtype: StorageDType, shape: &[usize]) {
        let numel: usize = shape.iter().product();
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        self.str(name);
        self.out
            .extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        self.out.push(b'(');
        self.str("storage");
        self.out
            .extend_from_slice(format!("ctorch\n{}\n", dtype.class_name()).as_bytes());
        self.str(&key.to_string());
        self.str("cpu");
        self.int(numel);
        self.out.extend_from_slice(b"tQ");
        self.int(0);
        self.dims(shape);
        self.dims(&stride);
        self.out.push(0x89);
        self.out.extend_from_slice(b"ccollections\nOrderedDict\n)R");
        self.out.extend_from_slice(b"tR");
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"u.");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_state_dict() {
        let mut p = StateDictPickler::new();
        p.tensor("fc1.weight", 0, StorageDType::F32, &[3, 2]);
        p.tensor("fc1.bias", 1, StorageDType::BF16, &[3]);
        let v = parse(&p.finish()).unwrap();
        let Value::Dict(items) = v else {
            panic!("not a dict")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0, Value::Str("fc1.weight".into()));
        let Value::Tensor(t) = &items[0].1 else {
            panic!("not a tensor")
        };
        assert_eq!(
            (t.key.as_str(), t.shape.as_slice(), t.stride.as_slice()),
            ("0", &[3, 2][..], &[2, 1][..])
        );
        let Value::Tensor(b) = &items[1].1 else {
            panic!("not a tensor")
        };
        assert_eq!((b.dtype, b.storage_numel), (StorageDType::BF16, 3));
    }

    #[test]
    fn refuses_os_system_before_calling_anything() {
        // The classic exploit: GLOBAL os.system, the argument tuple, REDUCE.
        let evil = b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touch\x85R.";
        let e = parse(evil).unwrap_err().to_string();
        assert!(e.contains("`os.system` is not allowed"), "{e}");
        assert!(e.contains("byte 2"), "{e}");
        // The same through protocol 4's STACK_GLOBAL.
        let evil4 = b"\x80\x04\x8c\x02os\x8c\x06system\x93X\x01\x00\x00\x00x\x85R.";
        let e = parse(evil4).unwrap_err().to_string();
        assert!(e.contains("`os.system` is not allowed"), "{e}");
        // builtins.eval, and an INST opcode (which imports and calls in one step).
        let e = parse(b"\x80\x02cbuiltins\neval\n.")
            .unwrap_err()
            .to_string();
        assert!(e.contains("builtins.eval"), "{e}");
        let e = parse(b"(ios\nsystem\n.").unwrap_err().to_string();
        assert!(e.contains("INST"), "{e}");
    }

    #[test]
    fn corrupt_and_truncated_pickles_are_errors() {
        let mut p = StateDictPickler::new();
        p.tensor("w", 0, StorageDType::F32, &[4]);
        let good = p.finish();
        for cut in [1, 5, good.len() / 2, good.len() - 1] {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let e = parse(b"\x80\x02\xff").unwrap_err().to_string();
        assert!(e.contains("0xff"), "{e}");
        let e = parse(b"\x80\x02h\x07.").unwrap_err().to_string();
        assert!(e.contains("memo key 7"), "{e}");
        let e = parse(b"\x80\x02s.").unwrap_err().to_string();
        assert!(e.contains("underflow"), "{e}");
    }
}
