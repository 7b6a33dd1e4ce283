// Self-test of the stand-in cuBLASLt and cuBLAS (libcublasLt.cpp, libcublas.cpp), run by
// tests/cuda_emu_gemm.rs: `gemm_selftest <libcublasLt.so> <libcublas.so>`; exit status 0 when
// every check holds.
//
// The libraries are loaded with dlopen and their symbols looked up by name, as cudarc does. The
// C declarations and enum values below are this file's own transcription of the cuBLAS headers,
// so a wrong value in a library shows up as a failure here.
//
// The reference is the mathematics, spelled out on logical matrices: the test draws op(A)
// (m x k), op(B) (k x n), C (m x n) and the bias (m) as plain arrays indexed (row, col), computes
// alpha op(A) op(B) + beta C + bias by the textbook triple sum, and only then writes the stored
// matrices (A = op(A) or its transpose) into column-major memory, element (r, c) at r + c ld.
// Inputs are small multiples of 1/8, so every product and sum is exact in float: f32 results
// must match exactly, 16-bit results must be the exact value rounded to nearest even.
// Padding rows of every output (between rows and ld) hold a sentinel that must survive.

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

// --- The C interface, transcribed -------------------------------------------------------------

enum Status : int {
    SUCCESS = 0,
    NOT_INITIALIZED = 1,
    INVALID_VALUE = 7,
    NOT_SUPPORTED = 15,
};

enum DataType : int { R_32F = 0, R_64F = 1, R_16F = 2, R_16BF = 14 };
enum Compute : int { C_32F = 68, C_64F = 70, C_32F_FAST_TF32 = 77 };
enum Op : int { OP_N = 0, OP_T = 1 };

// cublasLtMatmulDescAttributes_t
enum : unsigned {
    DESC_SCALE_TYPE = 1,
    DESC_POINTER_MODE = 2,
    DESC_TRANSA = 3,
    DESC_TRANSB = 4,
    DESC_TRANSC = 5,
    DESC_EPILOGUE = 7,
    DESC_BIAS_POINTER = 8,
    DESC_EPILOGUE_AUX_LD = 12,
    DESC_AMAX_D_POINTER = 21,
    DESC_BIAS_DATA_TYPE = 26,
};
enum : unsigned { EPILOGUE_DEFAULT = 1, EPILOGUE_RELU = 2, EPILOGUE_BIAS = 4 };
// cublasLtMatrixLayoutAttribute_t
enum : unsigned { LAYOUT_ORDER = 1, LAYOUT_ROWS = 2, LAYOUT_LD = 4, LAYOUT_BATCH_COUNT = 5 };
enum : int { ORDER_ROW = 1 };
// cublasLtMatmulPreferenceAttributes_t
enum : unsigned {
    PREF_MAX_WORKSPACE_BYTES = 1,
    PREF_MIN_ALIGNMENT_A = 5,
    PREF_MIN_ALIGNMENT_B = 6,
    PREF_MIN_ALIGNMENT_C = 7,
    PREF_MIN_ALIGNMENT_D = 8,
    PREF_MAX_WAVES_COUNT = 9,
    PREF_IMPL_MASK = 12,
};

struct Algo {
    uint64_t data[8];
};
struct HeuristicResult {
    Algo algo;
    size_t workspaceSize;
    int state;
    float wavesCount;
    int reserved[4];
};
static_assert(sizeof(HeuristicResult) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");

typedef void* LtHandle;
typedef void* Desc;
typedef void* Layout;
typedef void* Pref;
typedef void* Handle;

struct Lt {
    size_t (*GetVersion)();
    size_t (*GetCudartVersion)();
    int (*GetProperty)(int, int*);
    int (*Create)(LtHandle*);
    int (*Destroy)(LtHandle);
    int (*LayoutCreate)(Layout*, int, uint64_t, uint64_t, int64_t);
    int (*LayoutDestroy)(Layout);
    int (*LayoutSet)(Layout, unsigned, const void*, size_t);
    int (*LayoutGet)(Layout, unsigned, void*, size_t, size_t*);
    int (*DescCreate)(Desc*, int, int);
    int (*DescDestroy)(Desc);
    int (*DescSet)(Desc, unsigned, const void*, size_t);
    int (*DescGet)(Desc, unsigned, void*, size_t, size_t*);
    int (*PrefCreate)(Pref*);
    int (*PrefDestroy)(Pref);
    int (*PrefSet)(Pref, unsigned, const void*, size_t);
    int (*Heuristic)(LtHandle, Desc, Layout, Layout, Layout, Layout, Pref, int, HeuristicResult*,
                     int*);
    int (*Matmul)(LtHandle, Desc, const void*, const void*, Layout, const void*, Layout,
                  const void*, const void*, Layout, void*, Layout, const Algo*, void*, size_t,
                  void*);
    int (*Stats)(uint64_t*, size_t);
};

struct Blas {
    int (*Create)(Handle*);
    int (*Destroy)(Handle);
    int (*SetStream)(Handle, void*);
    int (*GetStream)(Handle, void**);
    int (*SetPointerMode)(Handle, int);
    int (*GetPointerMode)(Handle, int*);
    int (*GetVersion)(Handle, int*);
    int (*GetProperty)(int, int*);
    int (*GemmEx)(Handle, int, int, int, int, int, const void*, const void*, int, int,
                  const void*, int, int, const void*, void*, int, int, int, int);
    int (*Sger)(Handle, int, int, const float*, const float*, int, const float*, int, float*,
                int);
    int (*Stats)(uint64_t*, size_t);
};

Lt lt;
Blas blas;

// --- Checks -----------------------------------------------------------------------------------

std::atomic<long> g_checks{0};
std::atomic<long> g_failures{0};

__attribute__((format(printf, 2, 3))) bool check(bool ok, const char* fmt, ...) {
    g_checks.fetch_add(1);
    if (!ok) {
        const long n = g_failures.fetch_add(1);
        if (n < 40) {
            char msg[600];
            va_list ap;
            va_start(ap, fmt);
            std::vsnprintf(msg, sizeof msg, fmt, ap);
            va_end(ap);
            std::fprintf(stderr, "FAIL: %s\n", msg);
        }
    }
    return ok;
}

bool expect(int got, int want, const char* what) {
    return check(got == want, "%s: status %d, expected %d", what, got, want);
}

template <class F>
bool load_sym(void* lib, const char* name, F* out) {
    void* p = dlsym(lib, name);
    *out = reinterpret_cast<F>(p);
    return check(p != nullptr, "symbol %s not found", name);
}

// --- Values and their storage -----------------------------------------------------------------

// A deterministic generator (xorshift), so a failure can be reproduced.
struct Rng {
    uint64_t s;
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    // A multiple of 1/8 in [-4, 4]: exact in bf16, f16 and f32.
    double eighth() { return static_cast<double>(static_cast<int>(next() % 65) - 32) / 8.0; }
    double uniform() { return static_cast<double>(next() % 2000001) / 1000000.0 - 1.0; }
};

size_t size_of(int type) { return type == R_32F ? 4 : 2; }

// Encodes an exactly representable value (the test only stores such values in 16-bit types).
void put(int type, void* base, int64_t idx, double v) {
    char* p = static_cast<char*>(base);
    if (type == R_32F) {
        const float f = static_cast<float>(v);
        std::memcpy(p + idx * 4, &f, 4);
        return;
    }
    uint16_t h = 0;
    if (type == R_16BF) {
        const float f = static_cast<float>(v);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if ((u & 0xffff) != 0) check(false, "%g is not exact in bf16", v);
        h = static_cast<uint16_t>(u >> 16);
    } else if (std::isnan(v)) {
        h = 0x7e00;
    } else if (v != 0) {
        // v = sig * 2^e with sig in [0.5, 1): f16 stores 1.f * 2^(e - 1), biased by 15.
        int e;
        const double sig = std::frexp(std::fabs(v), &e);
        const double frac = (sig * 2 - 1) * 1024;
        if (e - 1 + 15 < 1 || e - 1 + 15 > 30 || frac != std::floor(frac))
            check(false, "%g is not a normal f16", v);
        h = static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | (e - 1 + 15) << 10 |
                                  static_cast<int>(frac));
    } else if (std::signbit(v)) {
        h = 0x8000;
    }
    std::memcpy(p + idx * 2, &h, 2);
}

double get(int type, const void* base, int64_t idx) {
    const char* p = static_cast<const char*>(base);
    if (type == R_32F) {
        float f;
        std::memcpy(&f, p + idx * 4, 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, p + idx * 2, 2);
    if (type == R_16BF) {
        const uint32_t u = static_cast<uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    const int e = (h >> 10) & 31, f = h & 1023;
    const double sign = (h & 0x8000) ? -1 : 1;
    if (e == 31) return f ? NAN : sign * INFINITY;
    if (e == 0) return sign * std::ldexp(f, -24);
    return sign * std::ldexp(1024 + f, e - 25);
}

// A logical matrix, element (r, c) at v[r * cols + c] (row-major on purpose: nothing here shares
// the libraries' column-major indexing).
struct Mat {
    int rows = 0, cols = 0;
    std::vector<double> v;
    Mat(int r, int c) : rows(r), cols(c), v(static_cast<size_t>(r) * c) {}
    double& at(int r, int c) { return v[static_cast<size_t>(r) * cols + c]; }
    double at(int r, int c) const { return v[static_cast<size_t>(r) * cols + c]; }
    Mat transposed() const {
        Mat t(cols, rows);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) t.at(c, r) = at(r, c);
        return t;
    }
};

Mat random_mat(Rng& rng, int r, int c, bool exact = true) {
    Mat m(r, c);
    for (double& x : m.v) x = exact ? rng.eighth() : rng.uniform();
    return m;
}

// Column-major device-style memory (host memory, as on the emulated device) of one matrix.
// Padding rows [rows, ld) of each column hold the sentinel.
constexpr double kSentinel = -96.5;  // exact in bf16, f16 and f32

struct Stored {
    int type, rows, cols;
    int64_t ld;
    std::vector<unsigned char> bytes;
    Stored(int t, int r, int c, int64_t l)
        : type(t), rows(r), cols(c), ld(l),
          bytes(static_cast<size_t>(c > 0 ? (c - 1) * l + r : 0) * size_of(t) + 1) {}
    void* ptr() { return bytes.data(); }
    void write(const Mat& m) {
        for (int c = 0; c < cols; ++c)
            for (int64_t r = 0; r < ld && c * ld + r < static_cast<int64_t>(elems()); ++r)
                put(type, ptr(), r + c * ld, r < rows ? m.at(static_cast<int>(r), c) : kSentinel);
    }
    void fill(double v) {
        for (size_t i = 0; i < elems(); ++i) put(type, ptr(), static_cast<int64_t>(i), v);
    }
    size_t elems() const { return (bytes.size() - 1) / size_of(type); }
    double read(int r, int c) const { return get(type, bytes.data(), r + c * ld); }
    bool padding_intact() const {
        for (int c = 0; c < cols; ++c)
            for (int64_t r = rows; r < ld && c * ld + r < static_cast<int64_t>(elems()); ++r)
                if (get(type, bytes.data(), r + c * ld) != kSentinel) return false;
        return true;
    }
};

// alpha op(A) op(B) + beta C + bias, from the definition; beta == 0 leaves C out entirely.
Mat reference(const Mat& opa, const Mat& opb, const Mat* c, const std::vector<double>* bias,
              double alpha, double beta) {
    Mat d(opa.rows, opb.cols);
    for (int i = 0; i < opa.rows; ++i)
        for (int j = 0; j < opb.cols; ++j) {
            double s = 0;
            for (int l = 0; l < opa.cols; ++l) s += opa.at(i, l) * opb.at(l, j);
            double v = alpha * s;
            if (beta != 0) v += beta * c->at(i, j);
            if (bias != nullptr) v += (*bias)[static_cast<size_t>(i)];
            d.at(i, j) = v;
        }
    return d;
}

// `v` rounded to nearest-even with `p` significant bits, by scaling its leading bit to 2^(p-1)
// and rounding to an integer (the default rounding mode is to nearest, ties to even). Valid for
// the normal range, which the test's values never leave.
double round_to_bits(double v, int p) {
    if (v == 0 || !std::isfinite(v)) return v;
    const int e = std::ilogb(v);
    return std::ldexp(std::nearbyint(std::ldexp(v, p - 1 - e)), e - (p - 1));
}

// f32 results of exact inputs are exact; 16-bit results are the exact value rounded to nearest
// even (8 significant bits for bf16, 11 for f16). `scale` bounds the terms for inexact inputs.
bool close(int type, double got, double want, double scale) {
    if (std::isnan(got)) return false;
    if (type == R_16BF) return got == round_to_bits(want, 8);
    if (type == R_16F) return got == round_to_bits(want, 11);
    return std::fabs(got - want) <= scale * 1e-6;
}

bool compare(const char* what, const Stored& d, const Mat& want, double scale) {
    int bad = 0;
    for (int j = 0; j < want.cols && bad < 3; ++j)
        for (int i = 0; i < want.rows && bad < 3; ++i) {
            const double got = d.read(i, j);
            if (!close(d.type, got, want.at(i, j), scale)) {
                check(false, "%s: D(%d, %d) = %.9g, expected %.9g", what, i, j, got,
                      want.at(i, j));
                ++bad;
            }
        }
    if (bad == 0) check(true, "%s", what);
    return check(d.padding_intact(), "%s: padding rows of D were written", what) && bad == 0;
}

uint32_t alignment_of(const void* p) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(p);
    uint32_t a = 1;
    while (a < 256 && v % (a * 2) == 0) a *= 2;
    return a;
}

// --- cuBLASLt: one matmul case ----------------------------------------------------------------

struct LtCase {
    int m, n, k;
    bool ta, tb;
    int ab_type, cd_type, compute;
    int pad;  // extra leading-dimension rows
    double alpha, beta;
    bool in_place, bias, bias_type_explicit, implicit_algo, exact;
};

struct LtObjects {
    Desc desc = nullptr;
    Layout a = nullptr, b = nullptr, c = nullptr, d = nullptr;
    Pref pref = nullptr;
    ~LtObjects() {
        lt.DescDestroy(desc);
        for (Layout l : {a, b, c, d})
            if (l != nullptr) lt.LayoutDestroy(l);
        lt.PrefDestroy(pref);
    }
};

bool set_i32(Desc desc, unsigned attr, int v) {
    return expect(lt.DescSet(desc, attr, &v, sizeof v), SUCCESS, "cublasLtMatmulDescSetAttribute");
}

void run_lt_case(LtHandle h, const LtCase& t, Rng& rng, std::vector<unsigned char>& workspace) {
    char what[300];
    std::snprintf(what, sizeof what,
                  "Lt m%d n%d k%d %c%c ab%d cd%d compute%d pad%d alpha%g beta%g%s%s%s%s", t.m,
                  t.n, t.k, t.ta ? 'T' : 'N', t.tb ? 'T' : 'N', t.ab_type, t.cd_type, t.compute,
                  t.pad, t.alpha, t.beta, t.in_place ? " in-place" : "", t.bias ? " bias" : "",
                  t.implicit_algo ? " implicit-algo" : "", t.exact ? "" : " inexact");
    const Mat opa = random_mat(rng, t.m, t.k, t.exact);
    const Mat opb = random_mat(rng, t.k, t.n, t.exact);
    const Mat c = random_mat(rng, t.m, t.n, t.exact);
    std::vector<double> bias(static_cast<size_t>(t.m));
    for (double& x : bias) x = t.exact ? rng.eighth() : rng.uniform();

    // Stored shapes: A is op(A) or its transpose, likewise B.
    const Mat a_st = t.ta ? opa.transposed() : opa;
    const Mat b_st = t.tb ? opb.transposed() : opb;
    Stored A(t.ab_type, a_st.rows, a_st.cols, a_st.rows + t.pad);
    Stored B(t.ab_type, b_st.rows, b_st.cols, b_st.rows + 2 * t.pad);
    Stored C(t.cd_type, t.m, t.n, t.m + t.pad);
    Stored D(t.cd_type, t.m, t.n, t.m + 3 * t.pad);
    Stored bias_st(t.cd_type, t.m, 1, t.m);
    A.write(a_st);
    B.write(b_st);
    Mat bias_mat(t.m, 1);
    for (int i = 0; i < t.m; ++i) bias_mat.at(i, 0) = bias[static_cast<size_t>(i)];
    bias_st.write(bias_mat);
    // With beta == 0, C is no input (in place or not): NaN there must not reach D. D starts as
    // NaN so that an element left unwritten shows.
    const auto nan_fill = [](Stored& s) {
        s.write(Mat(s.rows, s.cols));  // the sentinel in the padding rows
        for (int j = 0; j < s.cols; ++j)
            for (int i = 0; i < s.rows; ++i) put(s.type, s.ptr(), i + j * s.ld, NAN);
    };
    if (t.beta == 0) {
        nan_fill(C);
    } else {
        C.write(c);
    }
    Stored* out = t.in_place ? &C : &D;
    if (!t.in_place) nan_fill(D);

    LtObjects o;
    if (!expect(lt.DescCreate(&o.desc, t.compute, R_32F), SUCCESS, "cublasLtMatmulDescCreate"))
        return;
    if (!set_i32(o.desc, DESC_TRANSA, t.ta ? OP_T : OP_N) ||
        !set_i32(o.desc, DESC_TRANSB, t.tb ? OP_T : OP_N))
        return;
    if (t.bias) {
        const uint32_t epi = EPILOGUE_BIAS;
        expect(lt.DescSet(o.desc, DESC_EPILOGUE, &epi, sizeof epi), SUCCESS, "set EPILOGUE");
        if (t.bias_type_explicit) set_i32(o.desc, DESC_BIAS_DATA_TYPE, t.cd_type);
        const void* bp = bias_st.ptr();
        expect(lt.DescSet(o.desc, DESC_BIAS_POINTER, &bp, sizeof bp), SUCCESS, "set BIAS_POINTER");
    }
    expect(lt.LayoutCreate(&o.a, t.ab_type, A.rows, A.cols, A.ld), SUCCESS, "layout A");
    expect(lt.LayoutCreate(&o.b, t.ab_type, B.rows, B.cols, B.ld), SUCCESS, "layout B");
    expect(lt.LayoutCreate(&o.c, t.cd_type, C.rows, C.cols, C.ld), SUCCESS, "layout C");
    expect(lt.LayoutCreate(&o.d, t.cd_type, D.rows, D.cols, D.ld), SUCCESS, "layout D");
    Layout cl = o.c, dl = t.in_place ? o.c : o.d;
    void* dptr = out->ptr();

    HeuristicResult r[2];
    std::memset(r, 0, sizeof r);
    const Algo* algo = nullptr;
    if (!t.implicit_algo) {
        expect(lt.PrefCreate(&o.pref), SUCCESS, "cublasLtMatmulPreferenceCreate");
        const uint64_t ws = workspace.size();
        expect(lt.PrefSet(o.pref, PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), SUCCESS, "pref ws");
        const void* ptrs[4] = {A.ptr(), B.ptr(), C.ptr(), dptr};
        for (unsigned i = 0; i < 4; ++i) {
            const uint32_t al = alignment_of(ptrs[i]);
            expect(lt.PrefSet(o.pref, PREF_MIN_ALIGNMENT_A + i, &al, sizeof al), SUCCESS,
                   "pref alignment");
        }
        int count = -1;
        if (!expect(lt.Heuristic(h, o.desc, o.a, o.b, cl, dl, o.pref, 2, r, &count), SUCCESS,
                    what))
            return;
        if (!check(count == 1 && r[0].state == SUCCESS, "%s: heuristic returned %d algos", what,
                   count))
            return;
        check(r[0].workspaceSize <= workspace.size(), "%s: algo wants %zu workspace bytes", what,
              r[0].workspaceSize);
        algo = &r[0].algo;
    }
    const float alpha = static_cast<float>(t.alpha), beta = static_cast<float>(t.beta);
    const int s = lt.Matmul(h, o.desc, &alpha, A.ptr(), o.a, B.ptr(), o.b, &beta, C.ptr(), cl,
                            dptr, dl, algo, workspace.data(), workspace.size(), nullptr);
    if (!expect(s, SUCCESS, what)) return;
    const Mat want = reference(opa, opb, &c, t.bias ? &bias : nullptr, t.alpha, t.beta);
    double scale = 0;
    if (!t.exact) scale = t.k + 2.0;  // |terms| <= 1: the sum of |products| is at most k
    compare(what, *out, want, scale);
}

void lt_numerics(LtHandle h) {
    Rng rng{0x9e3779b97f4a7c15ULL};
    std::vector<unsigned char> workspace(1 << 20);
    struct Types {
        int ab, cd, compute;
    };
    const Types types[] = {{R_16BF, R_32F, C_32F},  {R_16F, R_32F, C_32F},
                           {R_32F, R_32F, C_32F},   {R_32F, R_32F, C_32F_FAST_TF32},
                           {R_16BF, R_16BF, C_32F}, {R_16F, R_16F, C_32F}};
    const int shapes[][3] = {{1, 1, 1}, {5, 3, 7}, {16, 8, 32}, {33, 17, 65}};
    struct Scale {
        double alpha, beta;
        bool in_place;
    };
    const Scale scales[] = {{1, 0, false}, {0.5, -0.5, false}, {1, 1, true}, {-2, 0, true}};
    int variant = 0;
    for (const Types& ty : types)
        for (const auto& sh : shapes)
            for (int tr = 0; tr < 4; ++tr)
                for (int pad : {0, 3})
                    for (const Scale& sc : scales)
                        for (bool bias : {false, true}) {
                            ++variant;
                            LtCase t{sh[0], sh[1], sh[2], (tr & 1) != 0, (tr & 2) != 0,
                                     ty.ab,  ty.cd,  ty.compute, pad, sc.alpha, sc.beta,
                                     sc.in_place, bias, variant % 2 == 0, variant % 7 == 0, true};
                            run_lt_case(h, t, rng, workspace);
                        }
    // Inexact inputs through the f32 and TF32 paths (rounded once to f32, TF32 not reproduced).
    for (int compute : {C_32F, C_32F_FAST_TF32})
        for (int tr = 0; tr < 4; ++tr) {
            LtCase t{37, 29, 257, (tr & 1) != 0, (tr & 2) != 0, R_32F, R_32F, compute, 1, 0.75,
                     0.25, false, true, false, false, false};
            run_lt_case(h, t, rng, workspace);
        }
}

// --- cuBLASLt: documented errors and strictness -----------------------------------------------

struct Problem {
    LtObjects o;
    std::vector<unsigned char> a, b, c;
    HeuristicResult r{};
    int count = -1;
    float alpha = 1, beta = 0;
};

// A consistent bf16 x bf16 -> f32 problem (m 4, n 3, k 5, NN), optionally with the heuristic run.
void make_problem(Problem& p, int a_type = R_16BF, int b_type = R_16BF) {
    lt.DescCreate(&p.o.desc, C_32F, R_32F);
    lt.LayoutCreate(&p.o.a, a_type, 4, 5, 4);
    lt.LayoutCreate(&p.o.b, b_type, 5, 3, 5);
    lt.LayoutCreate(&p.o.c, R_32F, 4, 3, 4);
    lt.PrefCreate(&p.o.pref);
    p.a.assign(64, 0);
    p.b.assign(64, 0);
    p.c.assign(64, 0);
}

int heuristic(LtHandle h, Problem& p) {
    return lt.Heuristic(h, p.o.desc, p.o.a, p.o.b, p.o.c, p.o.c, p.o.pref, 1, &p.r, &p.count);
}

int matmul(LtHandle h, Problem& p, const Algo* algo, void* ws = nullptr, size_t ws_bytes = 0) {
    return lt.Matmul(h, p.o.desc, &p.alpha, p.a.data(), p.o.a, p.b.data(), p.o.b, &p.beta,
                     p.c.data(), p.o.c, p.c.data(), p.o.c, algo, ws, ws_bytes, nullptr);
}

void lt_errors(LtHandle h) {
    {
        LtHandle none = nullptr;
        expect(lt.Create(nullptr), INVALID_VALUE, "cublasLtCreate(NULL)");
        Problem p;
        make_problem(p);
        expect(heuristic(none, p), NOT_INITIALIZED, "heuristic with a NULL handle");
        expect(matmul(none, p, nullptr), NOT_INITIALIZED, "matmul with a NULL handle");
        expect(lt.Matmul(h, nullptr, &p.alpha, p.a.data(), p.o.a, p.b.data(), p.o.b, &p.beta,
                         p.c.data(), p.o.c, p.c.data(), p.o.c, nullptr, nullptr, 0, nullptr),
               INVALID_VALUE, "matmul with a NULL descriptor");
        expect(lt.Matmul(h, p.o.desc, &p.alpha, p.a.data(), nullptr, p.b.data(), p.o.b, &p.beta,
                         p.c.data(), p.o.c, p.c.data(), p.o.c, nullptr, nullptr, 0, nullptr),
               INVALID_VALUE, "matmul with a NULL layout");
        expect(lt.Matmul(h, p.o.desc, nullptr, p.a.data(), p.o.a, p.b.data(), p.o.b, &p.beta,
                         p.c.data(), p.o.c, p.c.data(), p.o.c, nullptr, nullptr, 0, nullptr),
               INVALID_VALUE, "matmul with a NULL alpha");
        expect(heuristic(h, p), SUCCESS, "the consistent problem");
        check(p.count == 1, "one algorithm for the consistent problem");
        expect(matmul(h, p, &p.r.algo), SUCCESS, "matmul of the consistent problem");
        expect(lt.Heuristic(h, p.o.desc, p.o.a, p.o.b, p.o.c, p.o.c, p.o.pref, 0, &p.r, &p.count),
               INVALID_VALUE, "requestedAlgoCount 0");
        Algo garbage{};
        expect(matmul(h, p, &garbage), INVALID_VALUE, "an algo the heuristic never returned");
    }
    {
        Problem p;  // lda < rows
        make_problem(p);
        const int64_t ld = 3;
        expect(lt.LayoutSet(p.o.a, LAYOUT_LD, &ld, sizeof ld), SUCCESS, "set LD");
        expect(heuristic(h, p), INVALID_VALUE, "heuristic with lda 3 < rows 4");
        check(p.count == 0, "no algorithm for lda < rows");
        expect(matmul(h, p, nullptr), INVALID_VALUE, "matmul with lda 3 < rows 4");
    }
    {
        Problem p;  // inner dimensions differ: A 4 x 5, B 6 x 3
        make_problem(p);
        const uint64_t rows = 6;
        const int64_t ld = 6;
        lt.LayoutSet(p.o.b, LAYOUT_ROWS, &rows, sizeof rows);
        lt.LayoutSet(p.o.b, LAYOUT_LD, &ld, sizeof ld);
        expect(heuristic(h, p), INVALID_VALUE, "heuristic with k 5 vs 6");
        expect(matmul(h, p, nullptr), INVALID_VALUE, "matmul with k 5 vs 6");
        // Transposed, B gives op(B) 3 x 6: k 5 vs 3 is still inconsistent.
        set_i32(p.o.desc, DESC_TRANSB, OP_T);
        expect(heuristic(h, p), INVALID_VALUE, "heuristic with op(B) 3 x 6");
    }
    {
        Problem p;  // D's rows differ from op(A)'s
        make_problem(p);
        const uint64_t rows = 5;
        const int64_t ld = 5;
        lt.LayoutSet(p.o.c, LAYOUT_ROWS, &rows, sizeof rows);
        lt.LayoutSet(p.o.c, LAYOUT_LD, &ld, sizeof ld);
        expect(heuristic(h, p), INVALID_VALUE, "heuristic with D 5 x 3 for a 4 x 3 product");
    }
    {
        Problem p;  // k = 0
        make_problem(p);
        const uint64_t zero = 0;
        lt.LayoutSet(p.o.a, 3 /* COLS */, &zero, sizeof zero);
        lt.LayoutSet(p.o.b, LAYOUT_ROWS, &zero, sizeof zero);
        expect(heuristic(h, p), NOT_SUPPORTED, "heuristic with k = 0");
    }
    {
        Problem p;  // bf16 A with f16 B
        make_problem(p, R_16BF, R_16F);
        expect(heuristic(h, p), NOT_SUPPORTED, "A bf16 with B f16");
        check(p.count == 0, "no algorithm for mixed A/B types");
    }
    {
        Problem p;
        make_problem(p);
        int v = C_32F_FAST_TF32;
        lt.DescSet(p.o.desc, 0 /* COMPUTE_TYPE */, &v, sizeof v);
        expect(heuristic(h, p), NOT_SUPPORTED, "bf16 inputs with COMPUTE_32F_FAST_TF32");
        v = C_64F;
        lt.DescSet(p.o.desc, 0, &v, sizeof v);
        expect(heuristic(h, p), NOT_SUPPORTED, "COMPUTE_64F");
        v = C_32F;
        lt.DescSet(p.o.desc, 0, &v, sizeof v);
        v = R_16F;
        lt.DescSet(p.o.desc, DESC_SCALE_TYPE, &v, sizeof v);
        expect(heuristic(h, p), NOT_SUPPORTED, "scale type f16 with COMPUTE_32F");
    }
    {
        Problem p;  // C f32 but D bf16
        make_problem(p);
        Layout d = nullptr;
        lt.LayoutCreate(&d, R_16BF, 4, 3, 4);
        expect(lt.Heuristic(h, p.o.desc, p.o.a, p.o.b, p.o.c, d, p.o.pref, 1, &p.r, &p.count),
               NOT_SUPPORTED, "C f32 with D bf16");
        lt.LayoutDestroy(d);
    }
    {
        Problem p;  // bias of another type than D
        make_problem(p);
        const uint32_t epi = EPILOGUE_BIAS;
        lt.DescSet(p.o.desc, DESC_EPILOGUE, &epi, sizeof epi);
        set_i32(p.o.desc, DESC_BIAS_DATA_TYPE, R_16BF);
        expect(heuristic(h, p), NOT_SUPPORTED, "bias bf16 with D f32");
        set_i32(p.o.desc, DESC_BIAS_DATA_TYPE, R_32F);
        expect(heuristic(h, p), SUCCESS, "bias f32 with D f32");
        expect(matmul(h, p, &p.r.algo), INVALID_VALUE, "BIAS epilogue without a bias pointer");
    }
    {
        Problem p;  // attributes: sizes, values, unsupported ones
        make_problem(p);
        int v = 7;
        expect(lt.DescSet(p.o.desc, DESC_TRANSA, &v, sizeof v), INVALID_VALUE, "TRANSA 7");
        int64_t wide = OP_T;
        expect(lt.DescSet(p.o.desc, DESC_TRANSA, &wide, sizeof wide), INVALID_VALUE,
               "TRANSA given 8 bytes");
        expect(lt.DescSet(p.o.desc, DESC_TRANSA, nullptr, 4), INVALID_VALUE, "TRANSA from NULL");
        v = OP_T;
        expect(lt.DescSet(p.o.desc, DESC_TRANSC, &v, sizeof v), NOT_SUPPORTED, "TRANSC T");
        const uint32_t relu = EPILOGUE_RELU;
        expect(lt.DescSet(p.o.desc, DESC_EPILOGUE, &relu, sizeof relu), NOT_SUPPORTED,
               "the RELU epilogue");
        const int64_t aux_ld = 128;
        expect(lt.DescSet(p.o.desc, DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld), NOT_SUPPORTED,
               "EPILOGUE_AUX_LD");
        const void* amax = p.c.data();
        expect(lt.DescSet(p.o.desc, DESC_AMAX_D_POINTER, &amax, sizeof amax), NOT_SUPPORTED,
               "AMAX_D_POINTER");
        v = 2;  // DEVICE_VECTOR
        expect(lt.DescSet(p.o.desc, DESC_POINTER_MODE, &v, sizeof v), NOT_SUPPORTED,
               "pointer mode DEVICE_VECTOR");
        v = ORDER_ROW;
        expect(lt.LayoutSet(p.o.a, LAYOUT_ORDER, &v, sizeof v), NOT_SUPPORTED, "row-major order");
        v = 2;
        expect(lt.LayoutSet(p.o.a, LAYOUT_BATCH_COUNT, &v, sizeof v), NOT_SUPPORTED,
               "batch count 2");
        const uint64_t mask = 1;
        expect(lt.PrefSet(p.o.pref, PREF_IMPL_MASK, &mask, sizeof mask), NOT_SUPPORTED,
               "IMPL_MASK");
        const float waves = 2;
        expect(lt.PrefSet(p.o.pref, PREF_MAX_WAVES_COUNT, &waves, sizeof waves), NOT_SUPPORTED,
               "MAX_WAVES_COUNT");
        const uint32_t small = 4;
        expect(lt.PrefSet(p.o.pref, PREF_MAX_WORKSPACE_BYTES, &small, sizeof small),
               INVALID_VALUE, "MAX_WORKSPACE_BYTES given 4 bytes");

        // Read back what was stored; the size query; a wrong size.
        v = OP_T;
        set_i32(p.o.desc, DESC_TRANSA, v);
        int back = -1;
        size_t written = 0;
        expect(lt.DescGet(p.o.desc, DESC_TRANSA, &back, sizeof back, &written), SUCCESS,
               "get TRANSA");
        check(back == OP_T && written == 4, "TRANSA reads back %d (%zu bytes)", back, written);
        expect(lt.DescGet(p.o.desc, DESC_BIAS_POINTER, nullptr, 0, &written), SUCCESS,
               "size query of BIAS_POINTER");
        check(written == sizeof(void*), "BIAS_POINTER holds %zu bytes", written);
        expect(lt.DescGet(p.o.desc, DESC_TRANSA, &wide, sizeof wide, &written), INVALID_VALUE,
               "get TRANSA into 8 bytes");
        expect(lt.DescGet(p.o.desc, DESC_TRANSA, nullptr, 0, nullptr), INVALID_VALUE,
               "size query without sizeWritten");
        int64_t ld = -1;
        expect(lt.LayoutGet(p.o.b, LAYOUT_LD, &ld, sizeof ld, &written), SUCCESS, "get LD");
        check(ld == 5, "LD reads back %lld", static_cast<long long>(ld));
    }
    {
        Problem p;  // workspace: the algo's needs are binding
        make_problem(p);
        const uint64_t ws = 1 << 20;
        lt.PrefSet(p.o.pref, PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
        expect(heuristic(h, p), SUCCESS, "heuristic with a 1 MiB workspace");
        if (p.r.workspaceSize > 0) {
            std::vector<unsigned char> w(p.r.workspaceSize);
            expect(matmul(h, p, &p.r.algo, w.data(), w.size() - 1), INVALID_VALUE,
                   "a workspace one byte short of the algo's");
            expect(matmul(h, p, &p.r.algo, w.data(), w.size()), SUCCESS, "the algo's workspace");
        }
        check(p.r.workspaceSize <= ws, "the algo stays within MAX_WORKSPACE_BYTES");
    }
    {
        Problem p;  // alignment: an algo chosen for 16-byte-aligned A refuses a 2-byte-aligned A
        make_problem(p);
        const int64_t ld = 8;  // 16-byte columns
        lt.LayoutSet(p.o.a, LAYOUT_LD, &ld, sizeof ld);
        std::vector<unsigned char> abuf(128 + 16);
        unsigned char* aligned = abuf.data();
        while (reinterpret_cast<uintptr_t>(aligned) % 16 != 0) ++aligned;
        const uint32_t al = 16;
        lt.PrefSet(p.o.pref, PREF_MIN_ALIGNMENT_A, &al, sizeof al);
        expect(heuristic(h, p), SUCCESS, "heuristic for a 16-byte-aligned A");
        const auto run = [&](const void* a) {
            return lt.Matmul(h, p.o.desc, &p.alpha, a, p.o.a, p.b.data(), p.o.b, &p.beta,
                             p.c.data(), p.o.c, p.c.data(), p.o.c, &p.r.algo, nullptr, 0,
                             nullptr);
        };
        expect(run(aligned), SUCCESS, "the 16-byte-aligned A");
        expect(run(aligned + 2), INVALID_VALUE, "a 2-byte-aligned A with a 16-byte algo");
        const uint32_t one = 1;
        lt.PrefSet(p.o.pref, PREF_MIN_ALIGNMENT_A, &one, sizeof one);
        expect(heuristic(h, p), NOT_SUPPORTED, "MIN_ALIGNMENT_A 1 for bf16");
    }
    {
        Problem p;  // aliasing
        make_problem(p);
        p.beta = 1;
        Layout d = nullptr;
        lt.LayoutCreate(&d, R_32F, 4, 3, 5);  // same memory as C but another ld
        // 64-byte aligned, so that only the aliasing is wrong (an offset of 16 keeps D aligned).
        alignas(64) unsigned char big[128] = {0};
        expect(lt.Matmul(h, p.o.desc, &p.alpha, p.a.data(), p.o.a, p.b.data(), p.o.b, &p.beta,
                         big, p.o.c, big, d, nullptr, nullptr, 0, nullptr),
               INVALID_VALUE, "C == D with Cdesc != Ddesc");
        expect(lt.Matmul(h, p.o.desc, &p.alpha, p.a.data(), p.o.a, p.b.data(), p.o.b, &p.beta,
                         big, p.o.c, big + 16, p.o.c, nullptr, nullptr, 0, nullptr),
               INVALID_VALUE, "C and D overlapping, not equal");
        expect(lt.Matmul(h, p.o.desc, &p.alpha, p.a.data(), p.o.a, p.b.data(), p.o.b, &p.beta,
                         big, p.o.c, big + 48, p.o.c, nullptr, nullptr, 0, nullptr),
               SUCCESS, "C and D adjacent");
        // D over A: A's 40 bytes (4 x 5 bf16) lie inside D's 48.
        expect(lt.Matmul(h, p.o.desc, &p.alpha, big, p.o.a, p.b.data(), p.o.b, &p.beta,
                         p.c.data(), p.o.c, big, p.o.c, nullptr, nullptr, 0, nullptr),
               INVALID_VALUE, "D overlapping A");
        lt.LayoutDestroy(d);
    }
    {
        // The test knob that sends callers down their fallback: no algorithm for anything.
        Problem p;
        make_problem(p);
        setenv("PRFL_EMU_CUBLASLT_NO_ALGO", "1", 1);
        expect(heuristic(h, p), NOT_SUPPORTED, "heuristic under PRFL_EMU_CUBLASLT_NO_ALGO=1");
        check(p.count == 0, "no algorithm under PRFL_EMU_CUBLASLT_NO_ALGO=1");
        unsetenv("PRFL_EMU_CUBLASLT_NO_ALGO");
        expect(heuristic(h, p), SUCCESS, "heuristic once PRFL_EMU_CUBLASLT_NO_ALGO is unset");
    }
    {
        // Versions: cuBLAS's encoding, major * 10000 + minor * 100 + patch, for 13.x.
        const size_t v = lt.GetVersion();
        int major = -1, minor = -1, patch = -1;
        lt.GetProperty(0, &major);
        lt.GetProperty(1, &minor);
        lt.GetProperty(2, &patch);
        check(v / 10000 == 13, "cublasLtGetVersion %zu is not 13.x", v);
        check(static_cast<size_t>(major * 10000 + minor * 100 + patch) == v,
              "cublasLtGetProperty %d.%d.%d disagrees with cublasLtGetVersion %zu", major, minor,
              patch, v);
        check(lt.GetCudartVersion() / 1000 == 13, "cublasLtGetCudartVersion %zu is not 13.x",
              lt.GetCudartVersion());
        expect(lt.GetProperty(9, &major), INVALID_VALUE, "an unknown property");
        int bv = -1;
        expect(blas.GetVersion(nullptr, &bv), SUCCESS, "cublasGetVersion_v2");
        check(static_cast<size_t>(bv) == v, "cuBLAS %d and cuBLASLt %zu versions differ", bv, v);
        blas.GetProperty(0, &major);
        check(major == 13, "cublasGetProperty(MAJOR_VERSION) %d", major);
    }
}

// --- cuBLAS: cublasGemmEx ---------------------------------------------------------------------

void run_gemm_ex(Handle h, int m, int n, int k, bool ta, bool tb, int ab, int ct, int compute,
                 int pad, double alpha, double beta, Rng& rng) {
    char what[200];
    std::snprintf(what, sizeof what, "GemmEx m%d n%d k%d %c%c ab%d c%d compute%d pad%d a%g b%g",
                  m, n, k, ta ? 'T' : 'N', tb ? 'T' : 'N', ab, ct, compute, pad, alpha, beta);
    const Mat opa = random_mat(rng, m, k), opb = random_mat(rng, k, n), c = random_mat(rng, m, n);
    const Mat a_st = ta ? opa.transposed() : opa, b_st = tb ? opb.transposed() : opb;
    // max(1, rows): a k = 0 problem still has legal leading dimensions.
    Stored A(ab, a_st.rows, a_st.cols, std::max(1, a_st.rows) + pad);
    Stored B(ab, b_st.rows, b_st.cols, std::max(1, b_st.rows) + pad);
    Stored C(ct, m, n, m + 2 * pad);
    A.write(a_st);
    B.write(b_st);
    if (beta == 0) {
        C.write(Mat(m, n));
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) put(ct, C.ptr(), i + j * C.ld, NAN);
    } else {
        C.write(c);
    }
    if (alpha == 0 && k > 0) A.fill(NAN);  // alpha == 0: A and B are not read
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const int s = blas.GemmEx(h, ta ? OP_T : OP_N, tb ? OP_T : OP_N, m, n, k, &al, A.ptr(), ab,
                              static_cast<int>(A.ld), B.ptr(), ab, static_cast<int>(B.ld), &be,
                              C.ptr(), ct, static_cast<int>(C.ld), compute, -1);
    if (!expect(s, SUCCESS, what)) return;
    compare(what, C, reference(opa, opb, &c, nullptr, alpha, beta), 0);
}

void gemm_ex_numerics(Handle h) {
    Rng rng{0x2545f4914f6cdd1dULL};
    struct Types {
        int ab, c, compute;
    };
    const Types types[] = {{R_16BF, R_32F, C_32F},  {R_16F, R_32F, C_32F},
                           {R_32F, R_32F, C_32F},   {R_32F, R_32F, C_32F_FAST_TF32},
                           {R_16BF, R_16BF, C_32F}, {R_16F, R_16F, C_32F}};
    const int shapes[][3] = {{1, 1, 1}, {6, 5, 3}, {19, 7, 40}, {4, 3, 0}};
    const double scales[][2] = {{1, 0}, {0.5, -0.5}, {1, 1}, {0, 2}};
    for (const Types& ty : types)
        for (const auto& sh : shapes)
            for (int tr = 0; tr < 4; ++tr)
                for (int pad : {0, 2})
                    for (const auto& sc : scales)
                        run_gemm_ex(h, sh[0], sh[1], sh[2], (tr & 1) != 0, (tr & 2) != 0, ty.ab,
                                    ty.c, ty.compute, pad, sc[0], sc[1], rng);
}

void gemm_ex_errors(Handle h) {
    std::vector<float> a(64, 0), b(64, 0), c(64, 0);
    const float one = 1, zero = 0;
    const auto call = [&](Handle hh, int ta, int tb, int m, int n, int k, const float* alpha,
                          int lda, int ldb, int ldc, int at, int bt, int compute, int algo) {
        return blas.GemmEx(hh, ta, tb, m, n, k, alpha, a.data(), at, lda, b.data(), bt, ldb,
                           &zero, c.data(), R_32F, ldc, compute, algo);
    };
    expect(call(nullptr, OP_N, OP_N, 2, 2, 2, &one, 2, 2, 2, R_32F, R_32F, C_32F, -1),
           NOT_INITIALIZED, "GemmEx with a NULL handle");
    expect(call(h, OP_N, OP_N, -1, 2, 2, &one, 2, 2, 2, R_32F, R_32F, C_32F, -1), INVALID_VALUE,
           "GemmEx m = -1");
    expect(call(h, 5, OP_N, 2, 2, 2, &one, 2, 2, 2, R_32F, R_32F, C_32F, -1), INVALID_VALUE,
           "GemmEx transa 5");
    // The review's case: y = x W^T with in = 0 is TN with k = 0 and lda = in = 0.
    expect(call(h, OP_T, OP_N, 3, 2, 0, &one, 0, 1, 3, R_16BF, R_16BF, C_32F, -1), INVALID_VALUE,
           "GemmEx TN k = 0 with lda = 0");
    // dx = dy W with out = 0 is NN with k = 0 and ldb = out = 0.
    expect(call(h, OP_N, OP_N, 3, 2, 0, &one, 3, 0, 3, R_16BF, R_16BF, C_32F, -1), INVALID_VALUE,
           "GemmEx NN k = 0 with ldb = 0");
    expect(call(h, OP_T, OP_N, 3, 2, 0, &one, 1, 1, 3, R_16BF, R_16BF, C_32F, -1), SUCCESS,
           "GemmEx TN k = 0 with lda = 1");
    expect(call(h, OP_N, OP_N, 4, 2, 2, &one, 3, 2, 4, R_32F, R_32F, C_32F, -1), INVALID_VALUE,
           "GemmEx NN lda 3 < m 4");
    expect(call(h, OP_N, OP_T, 2, 4, 2, &one, 2, 3, 2, R_32F, R_32F, C_32F, -1), INVALID_VALUE,
           "GemmEx NT ldb 3 < n 4");
    expect(call(h, OP_N, OP_N, 4, 2, 2, &one, 4, 2, 3, R_32F, R_32F, C_32F, -1), INVALID_VALUE,
           "GemmEx ldc 3 < m 4");
    expect(call(h, OP_N, OP_N, 2, 2, 2, nullptr, 2, 2, 2, R_32F, R_32F, C_32F, -1), INVALID_VALUE,
           "GemmEx alpha NULL");
    expect(call(h, OP_N, OP_N, 2, 2, 2, &one, 2, 2, 2, R_16BF, R_16F, C_32F, -1), NOT_SUPPORTED,
           "GemmEx A bf16 with B f16");
    expect(call(h, OP_N, OP_N, 2, 2, 2, &one, 2, 2, 2, R_16BF, R_16BF, C_32F_FAST_TF32, -1),
           NOT_SUPPORTED, "GemmEx bf16 with COMPUTE_32F_FAST_TF32");
    expect(call(h, OP_N, OP_N, 2, 2, 2, &one, 2, 2, 2, R_32F, R_32F, C_64F, -1), NOT_SUPPORTED,
           "GemmEx COMPUTE_64F");
    expect(call(h, OP_N, OP_N, 2, 2, 2, &one, 2, 2, 2, R_32F, R_32F, C_32F, 50), NOT_SUPPORTED,
           "GemmEx algo 50");
    expect(blas.GemmEx(h, OP_N, OP_N, 2, 2, 2, &one, c.data(), R_32F, 2, b.data(), R_32F, 2,
                       &zero, c.data(), R_32F, 2, C_32F, -1),
           INVALID_VALUE, "GemmEx with C over A");
}

// --- cuBLAS: cublasSger_v2 --------------------------------------------------------------------

void sger_checks(Handle h) {
    Rng rng{0x1234567};
    const int m = 5, n = 4, lda = 7, incx = 2, incy = -1;
    std::vector<double> x(m), y(n);
    for (double& v : x) v = rng.eighth();
    for (double& v : y) v = rng.eighth();
    const Mat a0 = random_mat(rng, m, n);
    // Strided storage: x_i at xs[i incx]; with incy < 0, y_j at ys[(n - 1 - j) |incy|].
    std::vector<float> xs(static_cast<size_t>(m * incx)), ys(static_cast<size_t>(n));
    for (int i = 0; i < m; ++i) xs[static_cast<size_t>(i * incx)] = static_cast<float>(x[i]);
    for (int j = 0; j < n; ++j) ys[static_cast<size_t>(n - 1 - j)] = static_cast<float>(y[j]);
    Stored A(R_32F, m, n, lda);
    A.write(a0);
    const float alpha = 0.5f;
    if (expect(blas.Sger(h, m, n, &alpha, xs.data(), incx, ys.data(), incy,
                         static_cast<float*>(A.ptr()), lda),
               SUCCESS, "Sger")) {
        Mat want(m, n);
        for (int i = 0; i < m; ++i)
            for (int j = 0; j < n; ++j) want.at(i, j) = a0.at(i, j) + 0.5 * x[i] * y[j];
        compare("Sger A += alpha x y^T", A, want, 0);
    }
    // alpha == 0 returns at once (BLAS): NaN vectors leave A unchanged.
    std::vector<float> nan(16, NAN);
    const float zero = 0;
    Stored A2(R_32F, m, n, lda);
    A2.write(a0);
    expect(blas.Sger(h, m, n, &zero, nan.data(), 1, nan.data(), 1, static_cast<float*>(A2.ptr()),
                     lda),
           SUCCESS, "Sger alpha 0");
    compare("Sger alpha 0 leaves A", A2, a0, 0);
    float* ap = static_cast<float*>(A.ptr());
    expect(blas.Sger(h, m, n, &alpha, xs.data(), 0, ys.data(), 1, ap, lda), INVALID_VALUE,
           "Sger incx 0");
    expect(blas.Sger(h, m, n, &alpha, xs.data(), 1, ys.data(), 1, ap, m - 1), INVALID_VALUE,
           "Sger lda < m");
    expect(blas.Sger(h, -1, n, &alpha, xs.data(), 1, ys.data(), 1, ap, lda), INVALID_VALUE,
           "Sger m -1");
    expect(blas.Sger(nullptr, m, n, &alpha, xs.data(), 1, ys.data(), 1, ap, lda), NOT_INITIALIZED,
           "Sger NULL handle");
}

void handle_checks() {
    Handle h = nullptr;
    expect(blas.Create(nullptr), INVALID_VALUE, "cublasCreate_v2(NULL)");
    if (!expect(blas.Create(&h), SUCCESS, "cublasCreate_v2")) return;
    int mode = -1;
    blas.GetPointerMode(h, &mode);
    check(mode == 0, "the default pointer mode is HOST (%d)", mode);
    expect(blas.SetPointerMode(h, 1), SUCCESS, "pointer mode DEVICE");
    blas.GetPointerMode(h, &mode);
    check(mode == 1, "pointer mode reads back DEVICE (%d)", mode);
    expect(blas.SetPointerMode(h, 7), INVALID_VALUE, "pointer mode 7");
    int dummy_stream = 0;
    void* st = nullptr;
    expect(blas.SetStream(h, &dummy_stream), SUCCESS, "cublasSetStream_v2");
    blas.GetStream(h, &st);
    check(st == &dummy_stream, "the stream reads back");
    expect(blas.SetStream(nullptr, &dummy_stream), NOT_INITIALIZED, "SetStream on NULL");
    expect(blas.Destroy(h), SUCCESS, "cublasDestroy_v2");
    expect(blas.Destroy(nullptr), NOT_INITIALIZED, "cublasDestroy_v2(NULL)");
}

// --- Concurrency: what ThreadSanitizer should see clean -----------------------------------------

void concurrent(LtHandle shared) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([shared, t] {
            Rng rng{0xabcdef0123ULL + static_cast<uint64_t>(t)};
            std::vector<unsigned char> workspace(1 << 16);
            for (int i = 0; i < 6; ++i) {
                LtCase c{9 + t, 7, 13 + i, (i & 1) != 0, (i & 2) != 0, R_16BF, R_32F, C_32F, 1,
                         1, 0.5, false, (i % 3) == 0, false, false, true};
                run_lt_case(shared, c, rng, workspace);
            }
            Handle h = nullptr;
            blas.Create(&h);
            for (int i = 0; i < 4; ++i)
                run_gemm_ex(h, 8, 5 + t, 11, (i & 1) != 0, (i & 2) != 0, R_16BF, R_32F, C_32F, 1,
                            1, 1, rng);
            blas.Destroy(h);
        });
    for (std::thread& th : threads) th.join();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <libcublasLt.so> <libcublas.so>\n", argv[0]);
        return 2;
    }
    // The error cases are expected; the libraries' explanations of them would be noise.
    setenv("PRFL_EMU_BLAS_QUIET", "1", 1);
    void* ltlib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    void* blaslib = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    if (ltlib == nullptr || blaslib == nullptr) {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    bool ok = load_sym(ltlib, "cublasLtGetVersion", &lt.GetVersion) &&
              load_sym(ltlib, "cublasLtGetCudartVersion", &lt.GetCudartVersion) &&
              load_sym(ltlib, "cublasLtGetProperty", &lt.GetProperty) &&
              load_sym(ltlib, "cublasLtCreate", &lt.Create) &&
              load_sym(ltlib, "cublasLtDestroy", &lt.Destroy) &&
              load_sym(ltlib, "cublasLtMatrixLayoutCreate", &lt.LayoutCreate) &&
              load_sym(ltlib, "cublasLtMatrixLayoutDestroy", &lt.LayoutDestroy) &&
              load_sym(ltlib, "cublasLtMatrixLayoutSetAttribute", &lt.LayoutSet) &&
              load_sym(ltlib, "cublasLtMatrixLayoutGetAttribute", &lt.LayoutGet) &&
              load_sym(ltlib, "cublasLtMatmulDescCreate", &lt.DescCreate) &&
              load_sym(ltlib, "cublasLtMatmulDescDestroy", &lt.DescDestroy) &&
              load_sym(ltlib, "cublasLtMatmulDescSetAttribute", &lt.DescSet) &&
              load_sym(ltlib, "cublasLtMatmulDescGetAttribute", &lt.DescGet) &&
              load_sym(ltlib, "cublasLtMatmulPreferenceCreate", &lt.PrefCreate) &&
              load_sym(ltlib, "cublasLtMatmulPreferenceDestroy", &lt.PrefDestroy) &&
              load_sym(ltlib, "cublasLtMatmulPreferenceSetAttribute", &lt.PrefSet) &&
              load_sym(ltlib, "cublasLtMatmulAlgoGetHeuristic", &lt.Heuristic) &&
              load_sym(ltlib, "cublasLtMatmul", &lt.Matmul) &&
              load_sym(ltlib, "prfl_emu_cublaslt_stats", &lt.Stats) &&
              load_sym(blaslib, "cublasCreate_v2", &blas.Create) &&
              load_sym(blaslib, "cublasDestroy_v2", &blas.Destroy) &&
              load_sym(blaslib, "cublasSetStream_v2", &blas.SetStream) &&
              load_sym(blaslib, "cublasGetStream_v2", &blas.GetStream) &&
              load_sym(blaslib, "cublasSetPointerMode_v2", &blas.SetPointerMode) &&
              load_sym(blaslib, "cublasGetPointerMode_v2", &blas.GetPointerMode) &&
              load_sym(blaslib, "cublasGetVersion_v2", &blas.GetVersion) &&
              load_sym(blaslib, "cublasGetProperty", &blas.GetProperty) &&
              load_sym(blaslib, "cublasGemmEx", &blas.GemmEx) &&
              load_sym(blaslib, "cublasSger_v2", &blas.Sger) &&
              load_sym(blaslib, "prfl_emu_cublas_stats", &blas.Stats);
    if (!ok) return 1;

    LtHandle h = nullptr;
    if (!expect(lt.Create(&h), SUCCESS, "cublasLtCreate")) return 1;
    uint64_t before[4] = {0}, after[4] = {0};
    lt.Stats(before, 4);
    lt_numerics(h);
    lt.Stats(after, 4);
    check(after[2] > before[2] && after[0] > before[0] && after[1] == before[1] &&
              after[3] == before[3],
          "Lt counters: %" PRIu64 " heuristics, %" PRIu64 " refusals, %" PRIu64
          " matmuls, %" PRIu64 " failures during the numeric cases",
          after[0] - before[0], after[1] - before[1], after[2] - before[2],
          after[3] - before[3]);
    lt_errors(h);

    Handle bh = nullptr;
    if (!expect(blas.Create(&bh), SUCCESS, "cublasCreate_v2")) return 1;
    uint64_t bstats[4] = {0};
    gemm_ex_numerics(bh);
    blas.Stats(bstats, 4);
    check(bstats[0] > 0 && bstats[1] == 0, "GemmEx counters: %" PRIu64 " done, %" PRIu64 " refused",
          bstats[0], bstats[1]);
    gemm_ex_errors(bh);
    sger_checks(bh);
    handle_checks();
    concurrent(h);
    blas.Destroy(bh);
    expect(lt.Destroy(h), SUCCESS, "cublasLtDestroy");
    expect(lt.Destroy(nullptr), NOT_INITIALIZED, "cublasLtDestroy(NULL)");

    const long failures = g_failures.load();
    std::printf("gemm_selftest: %ld checks, %ld failed\n", g_checks.load(), failures);
    return failures == 0 ? 0 : 1;
}
