// Stand-in cuBLASLt for the emulated CUDA device (issue 12): the cuBLASLt entry points prfl's CUDA
// backend reaches through cudarc 0.19.10 (dynamic loading), computing on the CPU.
//
// On the emulated device, device memory is host memory (the stand-in libcuda allocates with
// malloc) and every operation is synchronous, so a matmul runs to completion on the calling
// thread, in stream order by construction, and the stream argument is only bookkeeping.
//
// The semantics are written from NVIDIA's cuBLASLt documentation (the cublasLtMatmul,
// cublasLtMatrixLayout*, cublasLtMatmulDesc*, cublasLtMatmulPreference* and
// cublasLtMatmulAlgoGetHeuristic pages and the attribute tables of cublasLt.h), not from prfl's
// gemm.rs, so that running prfl against it checks gemm.rs's row-major to column-major
// derivations instead of repeating them:
//   D = alpha * op(A) op(B) + beta * C  (+ bias[i] added to every column for the BIAS epilogue),
// every matrix column-major with its own rows, cols, leading dimension and type; op = N or T per
// the descriptor's TRANSA / TRANSB; m, n = rows, cols of D; k = cols of op(A) = rows of op(B);
// when beta == 0, C is not read (a NaN-filled C must not reach D); C == D is the documented
// in-place form (then Cdesc must describe D).
//
// Precision: products are accumulated in double from the exact input values and rounded once to
// D's type. Tensor-core behaviour is NOT reproduced: no TF32 rounding of f32 inputs for
// CUBLAS_COMPUTE_32F_FAST_TF32 (nor 16-bit rounding for 32F_FAST_16F/16BF), no f32 partial-sum
// order. The emulation therefore cannot show tensor-core rounding effects.
//
// Strictness: whatever prfl sets and this file does not implement is refused (an attribute set
// answers CUBLAS_STATUS_NOT_SUPPORTED, never a silent ignore), documented invalid calls answer the
// documented status, and a few conflicts the real library would only show as a wrong result or a
// device fault (an output overlapping an input, a pointer less aligned than the algorithm chosen
// for it, a workspace smaller than claimed) answer CUBLAS_STATUS_INVALID_VALUE ("parameters in
// conflict"). Every non-success status is explained on stderr (silenced by PRFL_EMU_BLAS_QUIET=1)
// because prfl falls back to cublasGemmEx when the heuristic refuses, which would otherwise hide a
// refusal.
//
// Environment (all optional): PRFL_EMU_BLAS_QUIET=1 silences the explanations;
// PRFL_EMU_BLAS_STATS=1 prints the call counters at exit; PRFL_EMU_CUBLASLT_NO_ALGO=1 makes the
// heuristic find no algorithm for any problem, which sends prfl down its cublasGemmEx fallback.
//
// Self-contained on purpose (no project header): the harness compiles this file alone. The small
// bf16/f16 conversions are repeated in libcublas.cpp for the same reason.

#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

// ---------------------------------------------------------------------------------------------
// C types and enum values, as cuBLASLt 13.0's headers define them (checked against cudarc
// 0.19.10's `cublaslt/sys` bindings for the cuda-13000 feature).

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
} cublasStatus_t;

// cudaDataType_t (library_types.h).
enum : int32_t {
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16F = 2,
    CUDA_R_16BF = 14,
};

// cublasComputeType_t.
enum : int32_t {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};

// cublasOperation_t. For real types CUBLAS_OP_C means the same as CUBLAS_OP_T.
enum : int32_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };

// cublasFillMode_t.
enum : int32_t { CUBLAS_FILL_MODE_FULL = 2 };

// cublasLtPointerMode_t.
enum : int32_t { CUBLASLT_POINTER_MODE_HOST = 0, CUBLASLT_POINTER_MODE_DEVICE = 1 };

// cublasLtEpilogue_t.
enum : uint32_t { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 };

// cublasLtOrder_t.
enum : int32_t { CUBLASLT_ORDER_COL = 0 };

// cublasLtMatmulSearch_t.
enum : uint32_t { CUBLASLT_SEARCH_BEST_FIT = 0 };

// libraryPropertyType_t.
enum : int32_t { MAJOR_VERSION = 0, MINOR_VERSION = 1, PATCH_LEVEL = 2 };

// cublasLtMatmulDescAttributes_t (the values prfl or this file name).
enum : uint32_t {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
    CUBLASLT_MATMUL_DESC_TRANSC = 5,
    CUBLASLT_MATMUL_DESC_FILL_MODE = 6,
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
};

// cublasLtMatrixLayoutAttribute_t.
enum : uint32_t {
    CUBLASLT_MATRIX_LAYOUT_TYPE = 0,
    CUBLASLT_MATRIX_LAYOUT_ORDER = 1,
    CUBLASLT_MATRIX_LAYOUT_ROWS = 2,
    CUBLASLT_MATRIX_LAYOUT_COLS = 3,
    CUBLASLT_MATRIX_LAYOUT_LD = 4,
    CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
};

// cublasLtMatmulPreferenceAttributes_t.
enum : uint32_t {
    CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

// The version this stand-in claims: cuBLAS(Lt) 13.0.0 of CUDA 13.0. cuBLAS encodes a version as
// major * 10000 + minor * 100 + patch (CUBLAS_VERSION in cublas_api.h); the CUDA runtime version
// it was built against as major * 1000 + minor * 10.
constexpr int kVersionMajor = 13;
constexpr int kVersionMinor = 0;
constexpr int kVersionPatch = 0;
constexpr size_t kVersion = kVersionMajor * 10000 + kVersionMinor * 100 + kVersionPatch;
constexpr size_t kCudartVersion = 13000;

// Magic numbers tag live objects, so that a garbage or destroyed handle is refused rather than
// used (a use after free is ASan's to report).
constexpr uint64_t kHandleMagic = 0x4c54'4841'4e44'4c45ULL;  // "LTHANDLE"
constexpr uint64_t kDescMagic = 0x4c54'4d4d'4445'5343ULL;    // "LTMMDESC"
constexpr uint64_t kLayoutMagic = 0x4c54'4c41'594f'5554ULL;  // "LTLAYOUT"
constexpr uint64_t kPrefMagic = 0x4c54'5052'4546'4552ULL;    // "LTPREFER"
constexpr uint64_t kAlgoMagic = 0x4c54'414c'474f'5249ULL;    // "LTALGORI"

struct cublasLtContext {
    uint64_t magic;
};

struct cublasLtMatmulDescOpaque_t {
    uint64_t magic;
    int32_t compute_type;
    int32_t scale_type;
    int32_t pointer_mode;
    int32_t transa;
    int32_t transb;
    int32_t transc;
    int32_t fill_mode;
    uint32_t epilogue;
    const void* bias;
    int32_t bias_type;  // -1: the documented default, D's type
};

struct cublasLtMatrixLayoutOpaque_t {
    uint64_t magic;
    uint32_t type;
    int32_t order;
    uint64_t rows;
    uint64_t cols;
    int64_t ld;
    int32_t batch_count;
};

struct cublasLtMatmulPreferenceOpaque_t {
    uint64_t magic;
    uint32_t search_mode;
    uint64_t max_workspace;
    uint32_t min_alignment[4];  // A, B, C, D
};

typedef cublasLtContext* cublasLtHandle_t;
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
typedef void* cudaStream_t;

// Semi-opaque in the real header (uint64_t data[8]); this stand-in fills it as AlgoData says.
struct cublasLtMatmulAlgo_t {
    uint64_t data[8];
};

struct cublasLtMatmulHeuristicResult_t {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
};

// ---------------------------------------------------------------------------------------------
// Diagnostics and counters.

namespace {

const char* status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// Returns `s` after explaining it on stderr (one line), unless PRFL_EMU_BLAS_QUIET=1.
__attribute__((format(printf, 3, 4))) cublasStatus_t fail(const char* fn, cublasStatus_t s,
                                                          const char* fmt, ...) {
    const char* quiet = std::getenv("PRFL_EMU_BLAS_QUIET");
    if (quiet == nullptr || std::strcmp(quiet, "1") != 0) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        std::fprintf(stderr, "[emulated cuBLASLt] %s: %s: %s\n", fn, status_name(s), msg);
    }
    return s;
}

// Counters a harness may read (prfl_emu_cublaslt_stats) to assert that the cuBLASLt path was
// taken and never refused.
std::atomic<uint64_t> g_heuristic_ok{0};
std::atomic<uint64_t> g_heuristic_refused{0};
std::atomic<uint64_t> g_matmul_ok{0};
std::atomic<uint64_t> g_matmul_failed{0};

// PRFL_EMU_BLAS_STATS=1 prints the counters when the library is unloaded (at exit), to see by
// hand which path a run took.
__attribute__((destructor)) void print_stats_at_exit() {
    const char* on = std::getenv("PRFL_EMU_BLAS_STATS");
    if (on == nullptr || std::strcmp(on, "1") != 0) return;
    std::fprintf(stderr,
                 "[emulated cuBLASLt] %llu heuristic queries answered, %llu refused; %llu "
                 "matmuls done, %llu refused\n",
                 static_cast<unsigned long long>(g_heuristic_ok.load()),
                 static_cast<unsigned long long>(g_heuristic_refused.load()),
                 static_cast<unsigned long long>(g_matmul_ok.load()),
                 static_cast<unsigned long long>(g_matmul_failed.load()));
}

// ---------------------------------------------------------------------------------------------
// Element types.

size_t elem_size(uint32_t type) {
    switch (type) {
        case CUDA_R_32F: return 4;
        case CUDA_R_16F:
        case CUDA_R_16BF: return 2;
        default: return 0;
    }
}

const char* type_name(int64_t type) {
    switch (type) {
        case CUDA_R_32F: return "CUDA_R_32F";
        case CUDA_R_64F: return "CUDA_R_64F";
        case CUDA_R_16F: return "CUDA_R_16F";
        case CUDA_R_16BF: return "CUDA_R_16BF";
        default: return "an unsupported cudaDataType";
    }
}

float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// IEEE binary16 to float (exact).
float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        // Zero or subnormal: mant * 2^-24.
        const float mag = std::ldexp(static_cast<float>(mant), -24);
        return sign ? -mag : mag;
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
    return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// float to IEEE binary16, round to nearest even (what a CUDA store of an f16 result does).
uint16_t float_to_half(float f) {
    const uint32_t x = float_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
    if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
    if (ax >= 0x38800000u) {                                              // normal (>= 2^-14)
        const uint32_t rebased = ax - 0x38000000u;                        // exponent bias 127 -> 15
        const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
        return static_cast<uint16_t>(sign | (rounded >> 13));
    }
    // Subnormal or zero: units of 2^-24, rounded to nearest even (nearbyint under the default
    // rounding mode); 1024 units is the smallest normal, whose encoding is also 1024.
    const float units = bits_to_float(ax) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(units)));
}

float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// float to bfloat16, round to nearest even; NaN stays a (quiet) NaN.
uint16_t float_to_bf16(float f) {
    const uint32_t x = float_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Element `idx` of a `type` array at `base` (memcpy: the pointer is only as aligned as the
// element, and UBSan must not see a misaligned typed load).
double load(uint32_t type, const void* base, int64_t idx) {
    const char* p = static_cast<const char*>(base);
    if (type == CUDA_R_32F) {
        float v;
        std::memcpy(&v, p + idx * 4, 4);
        return v;
    }
    uint16_t h;
    std::memcpy(&h, p + idx * 2, 2);
    return type == CUDA_R_16F ? half_to_float(h) : bf16_to_float(h);
}

// Stores `v` as element `idx`: rounded to f32 first (the scale type), then to a 16-bit D.
void store(uint32_t type, void* base, int64_t idx, double v) {
    char* p = static_cast<char*>(base);
    const float f = static_cast<float>(v);
    if (type == CUDA_R_32F) {
        std::memcpy(p + idx * 4, &f, 4);
        return;
    }
    const uint16_t h = type == CUDA_R_16F ? float_to_half(f) : float_to_bf16(f);
    std::memcpy(p + idx * 2, &h, 2);
}

// ---------------------------------------------------------------------------------------------
// Object checks.

bool live(const cublasLtContext* h) { return h != nullptr && h->magic == kHandleMagic; }
bool live(const cublasLtMatmulDescOpaque_t* d) { return d != nullptr && d->magic == kDescMagic; }
bool live(const cublasLtMatrixLayoutOpaque_t* l) {
    return l != nullptr && l->magic == kLayoutMagic;
}
bool live(const cublasLtMatmulPreferenceOpaque_t* p) {
    return p != nullptr && p->magic == kPrefMagic;
}

// Attribute buffers: the documented contract of every *SetAttribute / *GetAttribute.
template <class T>
cublasStatus_t read_attr(const char* fn, uint32_t attr, const void* buf, size_t size, T* out) {
    if (buf == nullptr)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "attribute %u: buf is NULL", attr);
    if (size != sizeof(T))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                    "attribute %u: sizeInBytes %zu, the attribute holds %zu bytes", attr, size,
                    sizeof(T));
    std::memcpy(out, buf, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

template <class T>
cublasStatus_t write_attr(const char* fn, uint32_t attr, const T& value, void* buf, size_t size,
                          size_t* written) {
    if (size == 0) {
        if (written == nullptr)
            return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                        "attribute %u: sizeInBytes 0 and sizeWritten NULL", attr);
        *written = sizeof(T);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (buf == nullptr || size != sizeof(T))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                    "attribute %u: buf %p, sizeInBytes %zu, the attribute holds %zu bytes", attr,
                    buf, size, sizeof(T));
    std::memcpy(buf, &value, sizeof(T));
    if (written != nullptr) *written = sizeof(T);
    return CUBLAS_STATUS_SUCCESS;
}

bool valid_op(int32_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }
bool transposed(int32_t op) { return op != CUBLAS_OP_N; }

// ---------------------------------------------------------------------------------------------
// The problem a descriptor and four layouts describe, checked as cublasLtMatmul documents it.

struct Problem {
    int64_t m, n, k;
    uint32_t a_type, b_type, c_type;  // D has C's type
    uint32_t bias_type;               // meaningful with the BIAS epilogue
    bool bias;
};

bool is_32f_compute(int32_t c) {
    return c == CUBLAS_COMPUTE_32F || c == CUBLAS_COMPUTE_32F_PEDANTIC ||
           c == CUBLAS_COMPUTE_32F_FAST_16F || c == CUBLAS_COMPUTE_32F_FAST_16BF ||
           c == CUBLAS_COMPUTE_32F_FAST_TF32;
}

// The type combinations of the documentation's cublasLtMatmul table for the 32F compute types
// (scale type CUDA_R_32F): A/B 16F, 16BF or 32F with C/D of the same type or 32F under
// COMPUTE_32F(_PEDANTIC); only all-32F under the FAST_* compute types. The table's other rows
// (16F/32I/64F compute, int8, fp8, complex) are refused with NOT_SUPPORTED: prfl does not use
// them, and a change that starts to must fail here rather than compute something unchecked.
cublasStatus_t check_types(const char* fn, const cublasLtMatmulDescOpaque_t& d, uint32_t a,
                           uint32_t b, uint32_t c, uint32_t dt) {
    if (!is_32f_compute(d.compute_type))
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "compute type %d is not emulated",
                    d.compute_type);
    if (d.scale_type != CUDA_R_32F)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                    "scale type %s with compute type %d (the table pairs 32F compute with a "
                    "CUDA_R_32F scale)",
                    type_name(d.scale_type), d.compute_type);
    if (c != dt)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "C is %s but D is %s (they must match)",
                    type_name(c), type_name(dt));
    if (a != b || elem_size(a) == 0 || elem_size(c) == 0)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "A %s, B %s, C/D %s is not a listed combo",
                    type_name(a), type_name(b), type_name(c));
    const bool fast = d.compute_type != CUBLAS_COMPUTE_32F &&
                      d.compute_type != CUBLAS_COMPUTE_32F_PEDANTIC;
    if (fast && (a != CUDA_R_32F || c != CUDA_R_32F))
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                    "compute type %d takes only CUDA_R_32F matrices (A %s, C/D %s)",
                    d.compute_type, type_name(a), type_name(c));
    if (c != CUDA_R_32F && c != a)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                    "A/B %s with C/D %s is not a listed combo", type_name(a), type_name(c));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t check_layout_shape(const char* fn, const char* name,
                                  const cublasLtMatrixLayoutOpaque_t& l) {
    if (l.rows > INT32_MAX || l.cols > INT32_MAX)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "%s is %llu x %llu (beyond int32)", name,
                    static_cast<unsigned long long>(l.rows),
                    static_cast<unsigned long long>(l.cols));
    // The LD attribute's documentation: large enough that columns do not overlap, i.e. at least
    // the number of rows for CUBLASLT_ORDER_COL (and at least 1).
    const int64_t need = l.rows > 0 ? static_cast<int64_t>(l.rows) : 1;
    if (l.ld < need)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "%s: ld %lld < max(1, rows %llu)", name,
                    static_cast<long long>(l.ld), static_cast<unsigned long long>(l.rows));
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t check_problem(const char* fn, const cublasLtMatmulDescOpaque_t& d,
                             const cublasLtMatrixLayoutOpaque_t& a,
                             const cublasLtMatrixLayoutOpaque_t& b,
                             const cublasLtMatrixLayoutOpaque_t& c,
                             const cublasLtMatrixLayoutOpaque_t& dl, Problem* out) {
    cublasStatus_t s = check_types(fn, d, a.type, b.type, c.type, dl.type);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    const struct {
        const char* name;
        const cublasLtMatrixLayoutOpaque_t* l;
    } all[4] = {{"A", &a}, {"B", &b}, {"C", &c}, {"D", &dl}};
    for (const auto& x : all) {
        s = check_layout_shape(fn, x.name, *x.l);
        if (s != CUBLAS_STATUS_SUCCESS) return s;
    }
    // op(A) is m x k, op(B) is k x n, C and D are m x n.
    const int64_t m = static_cast<int64_t>(transposed(d.transa) ? a.cols : a.rows);
    const int64_t ka = static_cast<int64_t>(transposed(d.transa) ? a.rows : a.cols);
    const int64_t kb = static_cast<int64_t>(transposed(d.transb) ? b.cols : b.rows);
    const int64_t n = static_cast<int64_t>(transposed(d.transb) ? b.rows : b.cols);
    if (ka != kb)
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                    "op(A) is %lld x %lld but op(B) is %lld x %lld (inner dimensions differ)",
                    static_cast<long long>(m), static_cast<long long>(ka),
                    static_cast<long long>(kb), static_cast<long long>(n));
    for (const auto& x : {all[2], all[3]}) {
        if (static_cast<int64_t>(x.l->rows) != m || static_cast<int64_t>(x.l->cols) != n)
            return fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                        "%s is %llu x %llu but op(A) op(B) is %lld x %lld", x.name,
                        static_cast<unsigned long long>(x.l->rows),
                        static_cast<unsigned long long>(x.l->cols), static_cast<long long>(m),
                        static_cast<long long>(n));
    }
    // Empty products are not promised by the documentation; prfl handles them itself.
    if (m == 0 || n == 0 || ka == 0)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "empty problem m %lld n %lld k %lld",
                    static_cast<long long>(m), static_cast<long long>(n),
                    static_cast<long long>(ka));
    out->m = m;
    out->n = n;
    out->k = ka;
    out->a_type = a.type;
    out->b_type = b.type;
    out->c_type = c.type;
    out->bias = d.epilogue == CUBLASLT_EPILOGUE_BIAS;
    // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: default (-1) = D's type for these (non-int8,
    // non-fp8) kernels; the table lists no other bias type for them.
    out->bias_type = d.bias_type == -1 ? dl.type : static_cast<uint32_t>(d.bias_type);
    if (out->bias && out->bias_type != dl.type)
        return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "bias type %s with D %s",
                    type_name(d.bias_type), type_name(dl.type));
    return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// The algorithm: what the heuristic promised, checked again by cublasLtMatmul.
//
// data[0] magic; data[1] A, B, C types and the compute type (8 bits each); data[2] the
// workspace bytes it uses; data[3] the alignment (bytes) it assumes of A, B, C, D (16 bits each);
// data[4] the alignment it assumes of the bias.

constexpr size_t kAlgoWorkspaceCap = 64 << 10;  // uses the workspace, so prfl's must be real
constexpr uint32_t kWidestAccess = 16;          // a 16-byte vector access is the widest

// The largest power of two dividing `v`, capped at the widest access (0: the cap).
uint32_t pow2_divisor(uint64_t v) {
    const uint64_t low = v & (~v + 1);
    return v == 0 || low > kWidestAccess ? kWidestAccess : static_cast<uint32_t>(low);
}

// The alignment an algorithm may assume of a matrix: what the preference allows, capped at the
// widest access, and no more than the column stride keeps (every column must start aligned).
uint32_t assumed_alignment(uint32_t pref, const cublasLtMatrixLayoutOpaque_t& l) {
    const uint32_t a = pow2_divisor(pref);
    const uint32_t stride = pow2_divisor(static_cast<uint64_t>(l.ld) * elem_size(l.type));
    return a < stride ? a : stride;
}

// NULL counts as fully aligned (the documented reading of a bias pointer not yet set).
uint32_t pointer_alignment(const void* p) {
    return pow2_divisor(reinterpret_cast<uintptr_t>(p));
}

uint64_t pack_types(const Problem& p, int32_t compute) {
    return static_cast<uint64_t>(p.a_type) | static_cast<uint64_t>(p.b_type) << 8 |
           static_cast<uint64_t>(p.c_type) << 16 | static_cast<uint64_t>(compute & 0xff) << 24;
}

cublasStatus_t choose_algo(const char* fn, const cublasLtMatmulDescOpaque_t& d,
                           const Problem& p, const cublasLtMatrixLayoutOpaque_t* const ls[4],
                           const cublasLtMatmulPreferenceOpaque_t& pref,
                           cublasLtMatmulAlgo_t* algo, size_t* workspace) {
    uint64_t aligns = 0;
    static const char* const names[4] = {"A", "B", "C", "D"};
    for (int i = 0; i < 4; ++i) {
        // No algorithm reads elements at addresses that are not multiples of their size.
        if (pref.min_alignment[i] < elem_size(ls[i]->type))
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                        "MIN_ALIGNMENT_%s_BYTES %u is below the element size", names[i],
                        pref.min_alignment[i]);
        const uint32_t a = assumed_alignment(pref.min_alignment[i], *ls[i]);
        aligns |= static_cast<uint64_t>(a) << (16 * i);
    }
    // The documentation: routines that do not dereference the bias pointer, like the heuristic,
    // depend on its value to determine the expected alignment (NULL: fully aligned).
    uint32_t bias_align = 0;
    if (p.bias) {
        bias_align = pointer_alignment(d.bias);
        if (bias_align < elem_size(p.bias_type))
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "bias pointer %p is misaligned", d.bias);
    }
    const size_t ws = pref.max_workspace < kAlgoWorkspaceCap
                          ? static_cast<size_t>(pref.max_workspace)
                          : kAlgoWorkspaceCap;
    std::memset(algo, 0, sizeof *algo);
    algo->data[0] = kAlgoMagic;
    algo->data[1] = pack_types(p, d.compute_type);
    algo->data[2] = ws;
    algo->data[3] = aligns;
    algo->data[4] = bias_align;
    *workspace = ws;
    return CUBLAS_STATUS_SUCCESS;
}

cublasLtMatmulPreferenceOpaque_t default_preference() {
    cublasLtMatmulPreferenceOpaque_t p{};
    p.magic = kPrefMagic;
    p.search_mode = CUBLASLT_SEARCH_BEST_FIT;
    p.max_workspace = 0;
    for (uint32_t& a : p.min_alignment) a = 256;
    return p;
}

// Bytes a column-major matrix spans from its first element.
uint64_t span_bytes(const cublasLtMatrixLayoutOpaque_t& l) {
    if (l.rows == 0 || l.cols == 0) return 0;
    return ((l.cols - 1) * static_cast<uint64_t>(l.ld) + l.rows) * elem_size(l.type);
}

bool overlap(const void* p, uint64_t pn, const void* q, uint64_t qn) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uintptr_t b = reinterpret_cast<uintptr_t>(q);
    return pn > 0 && qn > 0 && a < b + qn && b < a + pn;
}

bool same_layout(const cublasLtMatrixLayoutOpaque_t& x, const cublasLtMatrixLayoutOpaque_t& y) {
    return x.type == y.type && x.rows == y.rows && x.cols == y.cols && x.ld == y.ld &&
           x.order == y.order && x.batch_count == y.batch_count;
}

// D = alpha op(A) op(B) + beta C (+ bias), as documented. op(A) rows and op(B) columns are
// gathered once into contiguous double arrays, so the inner loop is a contiguous dot product.
void compute(const Problem& p, const cublasLtMatmulDescOpaque_t& d, double alpha, double beta,
             const void* a, int64_t lda, const void* b, int64_t ldb, const void* c, int64_t ldc,
             void* out, int64_t ldd) {
    const int64_t m = p.m, n = p.n, k = p.k;
    std::vector<double> arow(static_cast<size_t>(m * k));
    std::vector<double> bcol(static_cast<size_t>(n * k));
    const bool ta = transposed(d.transa), tb = transposed(d.transb);
    // op(A)(i, l) = A(i, l) = A[i + l lda] without transpose, A(l, i) = A[l + i lda] with.
    for (int64_t i = 0; i < m; ++i)
        for (int64_t l = 0; l < k; ++l)
            arow[i * k + l] = load(p.a_type, a, ta ? l + i * lda : i + l * lda);
    // op(B)(l, j) = B[l + j ldb] without transpose, B(j, l) = B[j + l ldb] with.
    for (int64_t j = 0; j < n; ++j)
        for (int64_t l = 0; l < k; ++l)
            bcol[j * k + l] = load(p.b_type, b, tb ? j + l * ldb : l + j * ldb);
    for (int64_t j = 0; j < n; ++j) {
        const double* bj = &bcol[j * k];
        for (int64_t i = 0; i < m; ++i) {
            const double* ai = &arow[i * k];
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t l = 0;
            for (; l + 4 <= k; l += 4) {
                s0 += ai[l] * bj[l];
                s1 += ai[l + 1] * bj[l + 1];
                s2 += ai[l + 2] * bj[l + 2];
                s3 += ai[l + 3] * bj[l + 3];
            }
            for (; l < k; ++l) s0 += ai[l] * bj[l];
            double v = alpha * ((s0 + s1) + (s2 + s3));
            // beta == 0: C is not an input (documented), so it is not read at all.
            if (beta != 0) v += beta * load(p.c_type, c, i + j * ldc);
            if (p.bias) v += load(p.bias_type, d.bias, i);
            store(p.c_type, out, i + j * ldd, v);
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points.

extern "C" {

size_t cublasLtGetVersion(void) { return kVersion; }

size_t cublasLtGetCudartVersion(void) { return kCudartVersion; }

cublasStatus_t cublasLtGetProperty(int32_t type, int* value) {
    if (value == nullptr)
        return fail("cublasLtGetProperty", CUBLAS_STATUS_INVALID_VALUE, "value is NULL");
    switch (type) {
        case MAJOR_VERSION: *value = kVersionMajor; return CUBLAS_STATUS_SUCCESS;
        case MINOR_VERSION: *value = kVersionMinor; return CUBLAS_STATUS_SUCCESS;
        case PATCH_LEVEL: *value = kVersionPatch; return CUBLAS_STATUS_SUCCESS;
        default:
            return fail("cublasLtGetProperty", CUBLAS_STATUS_INVALID_VALUE, "property %d", type);
    }
}

const char* cublasLtGetStatusName(cublasStatus_t status) { return status_name(status); }

const char* cublasLtGetStatusString(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "success";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the requested functionality is not supported";
        default: return "an error occurred (emulated cuBLASLt)";
    }
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
    if (handle == nullptr)
        return fail("cublasLtCreate", CUBLAS_STATUS_INVALID_VALUE, "handle is NULL");
    cublasLtContext* h = new (std::nothrow) cublasLtContext{kHandleMagic};
    if (h == nullptr) return fail("cublasLtCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of memory");
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    if (!live(handle))
        return fail("cublasLtDestroy", CUBLAS_STATUS_NOT_INITIALIZED, "handle %p is not live",
                    static_cast<void*>(handle));
    handle->magic = 0;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

// --- Matrix layouts ---------------------------------------------------------------------------

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, uint32_t type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
    if (layout == nullptr)
        return fail("cublasLtMatrixLayoutCreate", CUBLAS_STATUS_INVALID_VALUE, "matLayout is NULL");
    // Values are checked where the documentation checks them: by the heuristic and the matmul.
    cublasLtMatrixLayoutOpaque_t* l = new (std::nothrow)
        cublasLtMatrixLayoutOpaque_t{kLayoutMagic, type, CUBLASLT_ORDER_COL, rows, cols, ld, 1};
    if (l == nullptr)
        return fail("cublasLtMatrixLayoutCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of memory");
    *layout = l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    // Documented to succeed; a NULL layout is a no-op, a garbage one is refused.
    if (layout == nullptr) return CUBLAS_STATUS_SUCCESS;
    if (!live(layout))
        return fail("cublasLtMatrixLayoutDestroy", CUBLAS_STATUS_INVALID_VALUE,
                    "layout %p is not live", static_cast<void*>(layout));
    layout->magic = 0;
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, uint32_t attr,
                                                const void* buf, size_t size) {
    const char* fn = "cublasLtMatrixLayoutSetAttribute";
    if (!live(layout))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "layout %p is not live",
                    static_cast<void*>(layout));
    cublasStatus_t s;
    switch (attr) {
        case CUBLASLT_MATRIX_LAYOUT_TYPE: return read_attr(fn, attr, buf, size, &layout->type);
        case CUBLASLT_MATRIX_LAYOUT_ROWS: return read_attr(fn, attr, buf, size, &layout->rows);
        case CUBLASLT_MATRIX_LAYOUT_COLS: return read_attr(fn, attr, buf, size, &layout->cols);
        case CUBLASLT_MATRIX_LAYOUT_LD: return read_attr(fn, attr, buf, size, &layout->ld);
        case CUBLASLT_MATRIX_LAYOUT_ORDER: {
            int32_t v = 0;
            if ((s = read_attr(fn, attr, buf, size, &v)) != CUBLAS_STATUS_SUCCESS) return s;
            if (v != CUBLASLT_ORDER_COL)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "order %d: only column-major", v);
            layout->order = v;
            return CUBLAS_STATUS_SUCCESS;
        }
        case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: {
            int32_t v = 0;
            if ((s = read_attr(fn, attr, buf, size, &v)) != CUBLAS_STATUS_SUCCESS) return s;
            if (v != 1)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "batch count %d: only 1", v);
            layout->batch_count = v;
            return CUBLAS_STATUS_SUCCESS;
        }
        default:
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "layout attribute %u is not emulated",
                        attr);
    }
}

cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t layout, uint32_t attr,
                                                void* buf, size_t size, size_t* written) {
    const char* fn = "cublasLtMatrixLayoutGetAttribute";
    if (!live(layout))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "layout %p is not live",
                    static_cast<void*>(layout));
    switch (attr) {
        case CUBLASLT_MATRIX_LAYOUT_TYPE: return write_attr(fn, attr, layout->type, buf, size, written);
        case CUBLASLT_MATRIX_LAYOUT_ORDER: return write_attr(fn, attr, layout->order, buf, size, written);
        case CUBLASLT_MATRIX_LAYOUT_ROWS: return write_attr(fn, attr, layout->rows, buf, size, written);
        case CUBLASLT_MATRIX_LAYOUT_COLS: return write_attr(fn, attr, layout->cols, buf, size, written);
        case CUBLASLT_MATRIX_LAYOUT_LD: return write_attr(fn, attr, layout->ld, buf, size, written);
        case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT:
            return write_attr(fn, attr, layout->batch_count, buf, size, written);
        default:
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "layout attribute %u is not emulated",
                        attr);
    }
}

// --- Matmul descriptors -----------------------------------------------------------------------

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, int32_t compute_type,
                                        int32_t scale_type) {
    if (desc == nullptr)
        return fail("cublasLtMatmulDescCreate", CUBLAS_STATUS_INVALID_VALUE, "matmulDesc is NULL");
    // The documented defaults: host pointer mode, no transposes, full fill, DEFAULT epilogue, no
    // bias, bias type -1 (D's type).
    cublasLtMatmulDescOpaque_t* d = new (std::nothrow) cublasLtMatmulDescOpaque_t{
        kDescMagic,  compute_type,          scale_type,
        CUBLASLT_POINTER_MODE_HOST,         CUBLAS_OP_N,
        CUBLAS_OP_N, CUBLAS_OP_N,           CUBLAS_FILL_MODE_FULL,
        CUBLASLT_EPILOGUE_DEFAULT,          nullptr,
        -1};
    if (d == nullptr)
        return fail("cublasLtMatmulDescCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of memory");
    *desc = d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    if (desc == nullptr) return CUBLAS_STATUS_SUCCESS;
    if (!live(desc))
        return fail("cublasLtMatmulDescDestroy", CUBLAS_STATUS_INVALID_VALUE,
                    "descriptor %p is not live", static_cast<void*>(desc));
    desc->magic = 0;
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, uint32_t attr,
                                              const void* buf, size_t size) {
    const char* fn = "cublasLtMatmulDescSetAttribute";
    if (!live(desc))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "descriptor %p is not live",
                    static_cast<void*>(desc));
    cublasStatus_t s;
    int32_t v = 0;
    switch (attr) {
        case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
            return read_attr(fn, attr, buf, size, &desc->compute_type);
        case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
            return read_attr(fn, attr, buf, size, &desc->scale_type);
        case CUBLASLT_MATMUL_DESC_POINTER_MODE:
            if ((s = read_attr(fn, attr, buf, size, &v)) != CUBLAS_STATUS_SUCCESS) return s;
            // Host and device scalars are both host memory here; the vector modes are not
            // emulated.
            if (v != CUBLASLT_POINTER_MODE_HOST && v != CUBLASLT_POINTER_MODE_DEVICE)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "pointer mode %d", v);
            desc->pointer_mode = v;
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_DESC_TRANSA:
        case CUBLASLT_MATMUL_DESC_TRANSB:
            if ((s = read_attr(fn, attr, buf, size, &v)) != CUBLAS_STATUS_SUCCESS) return s;
            if (!valid_op(v)) return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "operation %d", v);
            (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->transa : desc->transb) = v;
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_DESC_TRANSC:
            if ((s = read_attr(fn, attr, buf, size, &v)) != CUBLAS_STATUS_SUCCESS) return s;
            // Documented: currently only CUBLAS_OP_N is supported.
            if (v != CUBLAS_OP_N)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "TRANSC %d: only CUBLAS_OP_N", v);
            desc->transc = v;
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_DESC_FILL_MODE:
            if ((s = read_attr(fn, attr, buf, size, &v)) != CUBLAS_STATUS_SUCCESS) return s;
            if (v != CUBLAS_FILL_MODE_FULL)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "fill mode %d: only FULL", v);
            desc->fill_mode = v;
            return CUBLAS_STATUS_SUCCESS;
        case CUBLASLT_MATMUL_DESC_EPILOGUE: {
            uint32_t e = 0;
            if ((s = read_attr(fn, attr, buf, size, &e)) != CUBLAS_STATUS_SUCCESS) return s;
            if (e != CUBLASLT_EPILOGUE_DEFAULT && e != CUBLASLT_EPILOGUE_BIAS)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                            "epilogue %u: only DEFAULT and BIAS are emulated", e);
            desc->epilogue = e;
            return CUBLAS_STATUS_SUCCESS;
        }
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
            return read_attr(fn, attr, buf, size, &desc->bias);
        case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
            return read_attr(fn, attr, buf, size, &desc->bias_type);
        default:
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                        "matmul descriptor attribute %u is not emulated", attr);
    }
}

cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t desc, uint32_t attr,
                                              void* buf, size_t size, size_t* written) {
    const char* fn = "cublasLtMatmulDescGetAttribute";
    if (!live(desc))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "descriptor %p is not live",
                    static_cast<void*>(desc));
    switch (attr) {
        case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
            return write_attr(fn, attr, desc->compute_type, buf, size, written);
        case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
            return write_attr(fn, attr, desc->scale_type, buf, size, written);
        case CUBLASLT_MATMUL_DESC_POINTER_MODE:
            return write_attr(fn, attr, desc->pointer_mode, buf, size, written);
        case CUBLASLT_MATMUL_DESC_TRANSA: return write_attr(fn, attr, desc->transa, buf, size, written);
        case CUBLASLT_MATMUL_DESC_TRANSB: return write_attr(fn, attr, desc->transb, buf, size, written);
        case CUBLASLT_MATMUL_DESC_TRANSC: return write_attr(fn, attr, desc->transc, buf, size, written);
        case CUBLASLT_MATMUL_DESC_FILL_MODE:
            return write_attr(fn, attr, desc->fill_mode, buf, size, written);
        case CUBLASLT_MATMUL_DESC_EPILOGUE:
            return write_attr(fn, attr, desc->epilogue, buf, size, written);
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
            return write_attr(fn, attr, desc->bias, buf, size, written);
        case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
            return write_attr(fn, attr, desc->bias_type, buf, size, written);
        default:
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED,
                        "matmul descriptor attribute %u is not emulated", attr);
    }
}

// --- Heuristic preferences --------------------------------------------------------------------

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    if (pref == nullptr)
        return fail("cublasLtMatmulPreferenceCreate", CUBLAS_STATUS_INVALID_VALUE, "pref is NULL");
    cublasLtMatmulPreferenceOpaque_t* p =
        new (std::nothrow) cublasLtMatmulPreferenceOpaque_t(default_preference());
    if (p == nullptr)
        return fail("cublasLtMatmulPreferenceCreate", CUBLAS_STATUS_ALLOC_FAILED, "out of memory");
    *pref = p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    if (pref == nullptr) return CUBLAS_STATUS_SUCCESS;
    if (!live(pref))
        return fail("cublasLtMatmulPreferenceDestroy", CUBLAS_STATUS_INVALID_VALUE,
                    "preference %p is not live", static_cast<void*>(pref));
    pref->magic = 0;
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    uint32_t attr, const void* buf, size_t size) {
    const char* fn = "cublasLtMatmulPreferenceSetAttribute";
    if (!live(pref))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "preference %p is not live",
                    static_cast<void*>(pref));
    switch (attr) {
        case CUBLASLT_MATMUL_PREF_SEARCH_MODE: {
            uint32_t v = 0;
            cublasStatus_t s = read_attr(fn, attr, buf, size, &v);
            if (s != CUBLAS_STATUS_SUCCESS) return s;
            if (v != CUBLASLT_SEARCH_BEST_FIT)
                return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "search mode %u: only BEST_FIT", v);
            pref->search_mode = v;
            return CUBLAS_STATUS_SUCCESS;
        }
        case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
            return read_attr(fn, attr, buf, size, &pref->max_workspace);
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
            return read_attr(fn, attr, buf, size,
                             &pref->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES]);
        default:
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "preference attribute %u is not emulated",
                        attr);
    }
}

cublasStatus_t cublasLtMatmulPreferenceGetAttribute(cublasLtMatmulPreference_t pref,
                                                    uint32_t attr, void* buf, size_t size,
                                                    size_t* written) {
    const char* fn = "cublasLtMatmulPreferenceGetAttribute";
    if (!live(pref))
        return fail(fn, CUBLAS_STATUS_INVALID_VALUE, "preference %p is not live",
                    static_cast<void*>(pref));
    switch (attr) {
        case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
            return write_attr(fn, attr, pref->search_mode, buf, size, written);
        case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
            return write_attr(fn, attr, pref->max_workspace, buf, size, written);
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
        case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
            return write_attr(fn, attr,
                              pref->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES],
                              buf, size, written);
        default:
            return fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "preference attribute %u is not emulated",
                        attr);
    }
}

// --- Heuristic and matmul ---------------------------------------------------------------------

// One algorithm for a supported, consistent problem; CUBLAS_STATUS_NOT_SUPPORTED (no algorithm)
// for an unsupported one, CUBLAS_STATUS_INVALID_VALUE for inconsistent layouts.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t adesc,
                                              cublasLtMatrixLayout_t bdesc,
                                              cublasLtMatrixLayout_t cdesc,
                                              cublasLtMatrixLayout_t ddesc,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* returned) {
    const char* fn = "cublasLtMatmulAlgoGetHeuristic";
    if (returned != nullptr) *returned = 0;
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
    if (!live(handle))
        s = fail(fn, CUBLAS_STATUS_NOT_INITIALIZED, "handle %p is not live",
                 static_cast<void*>(handle));
    else if (!live(desc) || !live(adesc) || !live(bdesc) || !live(ddesc) ||
             (cdesc != nullptr && !live(cdesc)) || !live(pref))
        s = fail(fn, CUBLAS_STATUS_INVALID_VALUE, "a descriptor or layout is NULL or not live");
    else if (requested <= 0)
        s = fail(fn, CUBLAS_STATUS_INVALID_VALUE, "requestedAlgoCount %d", requested);
    else if (results == nullptr || returned == nullptr)
        s = fail(fn, CUBLAS_STATUS_INVALID_VALUE, "a result pointer is NULL");
    // PRFL_EMU_CUBLASLT_NO_ALGO=1: no algorithm for any problem, as a real cuBLASLt may answer
    // for shapes it has no kernel for, so that a test run takes the caller's fallback path.
    const char* no_algo = std::getenv("PRFL_EMU_CUBLASLT_NO_ALGO");
    if (s == CUBLAS_STATUS_SUCCESS && no_algo != nullptr && std::strcmp(no_algo, "1") == 0)
        s = fail(fn, CUBLAS_STATUS_NOT_SUPPORTED, "no algorithm (PRFL_EMU_CUBLASLT_NO_ALGO=1)");
    Problem p{};
    if (s == CUBLAS_STATUS_SUCCESS) {
        const cublasLtMatrixLayoutOpaque_t& c = cdesc != nullptr ? *cdesc : *ddesc;
        s = check_problem(fn, *desc, *adesc, *bdesc, c, *ddesc, &p);
        if (s == CUBLAS_STATUS_SUCCESS) {
            const cublasLtMatrixLayoutOpaque_t* ls[4] = {adesc, bdesc, &c, ddesc};
            cublasLtMatmulHeuristicResult_t r{};
            s = choose_algo(fn, *desc, p, ls, *pref, &r.algo, &r.workspaceSize);
            if (s == CUBLAS_STATUS_SUCCESS) {
                r.state = CUBLAS_STATUS_SUCCESS;
                r.wavesCount = 1.0f;
                results[0] = r;
                *returned = 1;
            }
        }
    }
    (s == CUBLAS_STATUS_SUCCESS ? g_heuristic_ok : g_heuristic_refused)
        .fetch_add(1, std::memory_order_relaxed);
    return s;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                              const void* alpha, const void* a, cublasLtMatrixLayout_t adesc,
                              const void* b, cublasLtMatrixLayout_t bdesc, const void* beta,
                              const void* c, cublasLtMatrixLayout_t cdesc, void* d,
                              cublasLtMatrixLayout_t ddesc, const cublasLtMatmulAlgo_t* algo,
                              void* workspace, size_t workspace_bytes, cudaStream_t /*stream*/) {
    const char* fn = "cublasLtMatmul";
    auto done = [](cublasStatus_t s) {
        (s == CUBLAS_STATUS_SUCCESS ? g_matmul_ok : g_matmul_failed)
            .fetch_add(1, std::memory_order_relaxed);
        return s;
    };
    if (!live(handle))
        return done(fail(fn, CUBLAS_STATUS_NOT_INITIALIZED, "handle %p is not live",
                         static_cast<void*>(handle)));
    if (!live(desc) || !live(adesc) || !live(bdesc) || !live(ddesc) ||
        (cdesc != nullptr && !live(cdesc)))
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "a descriptor or layout is NULL or not live"));
    // Documented: a NULL Cdesc means Ddesc.
    const cublasLtMatrixLayoutOpaque_t& cl = cdesc != nullptr ? *cdesc : *ddesc;
    Problem p{};
    cublasStatus_t s = check_problem(fn, *desc, *adesc, *bdesc, cl, *ddesc, &p);
    if (s != CUBLAS_STATUS_SUCCESS) return done(s);
    if (alpha == nullptr || beta == nullptr)
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE, "alpha or beta is NULL"));
    float alpha_f, beta_f;  // scale type CUDA_R_32F (checked above)
    std::memcpy(&alpha_f, alpha, 4);
    std::memcpy(&beta_f, beta, 4);
    if (a == nullptr || b == nullptr || d == nullptr || (beta_f != 0 && c == nullptr))
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE, "A %p, B %p, C %p or D %p is NULL", a,
                         b, c, static_cast<void*>(d)));
    if (p.bias && desc->bias == nullptr)
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "the BIAS epilogue is set but CUBLASLT_MATMUL_DESC_BIAS_POINTER is NULL"));

    // The algorithm: the caller's, or (documented for a NULL algo) an implicit heuristic query
    // with default preferences.
    cublasLtMatmulAlgo_t implicit;
    if (algo == nullptr) {
        const cublasLtMatmulPreferenceOpaque_t pref = default_preference();
        const cublasLtMatrixLayoutOpaque_t* ls[4] = {adesc, bdesc, &cl, ddesc};
        size_t ws = 0;
        s = choose_algo(fn, *desc, p, ls, pref, &implicit, &ws);
        if (s != CUBLAS_STATUS_SUCCESS) return done(s);
        algo = &implicit;
    }
    if (algo->data[0] != kAlgoMagic)
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "algo was not returned by cublasLtMatmulAlgoGetHeuristic"));
    if (algo->data[1] != pack_types(p, desc->compute_type))
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "algo was chosen for other types or another compute type"));
    const void* ptrs[4] = {a, b, c, d};
    static const char* const names[4] = {"A", "B", "C", "D"};
    for (int i = 0; i < 4; ++i) {
        if (i == 2 && beta_f == 0) continue;  // C is not read
        const uint32_t need = static_cast<uint32_t>((algo->data[3] >> (16 * i)) & 0xffff);
        if (pointer_alignment(ptrs[i]) < need)
            return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                             "%s %p is less aligned than the %u bytes its algo was chosen for",
                             names[i], ptrs[i], need));
    }
    if (p.bias && pointer_alignment(desc->bias) < algo->data[4])
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "bias %p is less aligned than the %llu bytes its algo was chosen for",
                         desc->bias, static_cast<unsigned long long>(algo->data[4])));
    const size_t ws_need = static_cast<size_t>(algo->data[2]);
    if (workspace_bytes < ws_need)
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "workspaceSizeInBytes %zu < the %zu bytes the algo needs",
                         workspace_bytes, ws_need));
    if (workspace_bytes > 0 && workspace == nullptr)
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE, "workspace is NULL but %zu bytes",
                         workspace_bytes));

    // In place is C == D with Cdesc == Ddesc; otherwise C and D must not overlap, and D never
    // overlaps an input (a GPU kernel would race on it).
    const uint64_t a_bytes = span_bytes(*adesc), b_bytes = span_bytes(*bdesc);
    const uint64_t c_bytes = span_bytes(cl), d_bytes = span_bytes(*ddesc);
    if (beta_f != 0 && c == d && !same_layout(cl, *ddesc))
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE,
                         "C == D in place but Cdesc (ld %lld) differs from Ddesc (ld %lld)",
                         static_cast<long long>(cl.ld), static_cast<long long>(ddesc->ld)));
    if (beta_f != 0 && c != d && overlap(c, c_bytes, d, d_bytes))
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE, "C and D overlap without C == D"));
    if (overlap(a, a_bytes, d, d_bytes) || overlap(b, b_bytes, d, d_bytes) ||
        (p.bias && overlap(desc->bias, static_cast<uint64_t>(p.m) * elem_size(p.bias_type), d,
                           d_bytes)))
        return done(fail(fn, CUBLAS_STATUS_INVALID_VALUE, "D overlaps A, B or the bias"));

    // The workspace is scratch the algo owns for the call: scribble over what it uses and touch
    // the last byte the caller claims, so that a short workspace is ASan's to see.
    if (workspace_bytes > 0) {
        std::memset(workspace, 0xa5, ws_need);
        static_cast<unsigned char*>(workspace)[workspace_bytes - 1] = 0xa5;
    }
    compute(p, *desc, alpha_f, beta_f, a, adesc->ld, b, bdesc->ld, c, cl.ld, d, ddesc->ld);
    return done(CUBLAS_STATUS_SUCCESS);
}

// Not a cuBLASLt entry point: the stand-in's counters, for a harness to assert on.
// out[0] heuristic queries answered with an algorithm, out[1] refused, out[2] matmuls done,
// out[3] matmuls refused. Writes min(count, 4) values and returns 4.
int prfl_emu_cublaslt_stats(uint64_t* out, size_t count) {
    const uint64_t v[4] = {g_heuristic_ok.load(), g_heuristic_refused.load(), g_matmul_ok.load(),
                           g_matmul_failed.load()};
    for (size_t i = 0; i < count && i < 4; ++i) out[i] = v[i];
    return 4;
}

}  // extern "C"
