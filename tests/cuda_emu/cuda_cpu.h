// CUDA C++ on the CPU: the emulation header force-included (`g++ -include cuda_cpu.h`) before a
// kernel source of src/backend/cuda/kernels/ compiled as C++17 with -DPRFL_CUDA_CPU_EMU. The
// stand-in NVRTC (libnvrtc.cpp) builds each source into a shared object with this header; the
// stand-in driver (libcuda.cpp) dlopens it and launches kernels through `prfl_emu_launch`.
//
// Execution model:
// - Blocks run one after another on the thread that calls cuLaunchKernel; the threads of a
//   block are fibers (one stack each, switched by a few lines of assembly) scheduled
//   cooperatively on that thread. A fiber runs until it reaches a barrier or a warp collective
//   (or exits), so kernels without barriers cost one switch per thread. Fibers instead of OS
//   threads because the suite launches thousands of grids of 256-thread blocks on two cores:
//   waking 256 OS threads per block and per barrier would take minutes.
// - The sanitizers see the fibers as threads: TSan through its fiber API with no implicit
//   synchronisation at a switch (so a missing __syncthreads is a reported race), with
//   happens-before only where CUDA orders memory: __syncthreads and __syncwarp
//   (__tsan_release/__tsan_acquire); shuffles, mma and ldmatrix exchange registers only. ASan
//   through the fiber-switch hooks.
// - `__syncthreads` waits for every thread of the block that has not exited (as hardware
//   does); warp collectives (`__shfl_*_sync`, mma, ldmatrix) are rendezvous of the 32 lanes
//   on a per-warp barrier, exchanging values through a per-warp scratch. Threads that wait at
//   different barriers forever are a reported launch failure (a hang on a GPU).
// - Dynamic shared memory is exactly the launch's byte count from the heap per block (an
//   overrun is an ASan heap-buffer-overflow), filled with 0xff (NaN for unwritten floats).
//   Static `__shared__` arrays are plain statics (one block at a time per module, launches
//   serialised by a module-wide mutex).
// - Vector types are aligned structs, so a misaligned float4 access is a UBSan report.
// - Inline PTX is emulated from the PTX ISA's definitions (mma.m16n8k16 fragment tables,
//   ldmatrix .x4.trans, cvt.rn.bf16x2.f32, ex2.approx.ftz.f32). bf16 products are exact in f32
//   and accumulated in f32 in k order: the tensor cores' internal rounding is not reproduced.
#pragma once

#include <cmath>
#include <atomic>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>

#include <sys/mman.h>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define PRFL_EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define PRFL_EMU_ASAN 1
#endif

// ------------------------------------------------------------------ keywords and qualifiers

#ifdef PRFL_EMU_SCAN
// The stand-in NVRTC preprocesses a source with this defined and collects the names that follow
// the marker: the kernels it registers for launching.
#define __global__ PRFL_EMU_GLOBAL_MARK
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

// ------------------------------------------------------------------ vector types

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
typedef dim3 uint3;

struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) double2 { double x, y; };

inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ------------------------------------------------------------------ math intrinsics
// IEEE single precision with the stated rounding (the file is compiled with -ffp-contract=off,
// so `a * b + c` is never fused behind the kernel's back).

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldg(const T* p) { return *p; }

// CUDA's integer min/max overloads (the device library has them for every integer width).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// ------------------------------------------------------------------ the fiber runtime

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save and resumes the context whose stack pointer is `next`.
extern "C" void prfl_emu_swap(void** save, void* next);
__asm__(R"(
    .text
    .globl prfl_emu_swap
    .hidden prfl_emu_swap
    .type prfl_emu_swap,@function
    .p2align 4
prfl_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size prfl_emu_swap, .-prfl_emu_swap
)");

namespace {
namespace prfl_emu {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr int kMaxKernels = 256;
// Large enough for the kernels' register arrays under ASan's stack redzones.
constexpr size_t kStackBytes = 512 * 1024;

enum class Wait { None, Block, Warp, Done };

// Runtime state that several fibers of a block read and write (barrier counts, wait states, the
// current fiber). Stored as relaxed atomics only so that TSan, which sees every fiber as a
// thread, does not report the runtime's own bookkeeping: the fibers run one at a time on one OS
// thread, so no ordering is needed (and none is implied: the kernel's memory is ordered for
// TSan only by the explicit release/acquire annotations of the barriers). Plain loads and
// stores in the generated code.
template <class T>
struct Relaxed {
    std::atomic<T> v;
    Relaxed(T x = T()) : v(x) {}
    operator T() const { return v.load(std::memory_order_relaxed); }
    T operator->() const { return v.load(std::memory_order_relaxed); }
    Relaxed& operator=(T x) {
        v.store(x, std::memory_order_relaxed);
        return *this;
    }
    T operator++() { return *this = T(*this + 1), T(*this); }
    T operator--() { return *this = T(*this - 1), T(*this); }
};

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;  // lowest address of the usable stack (a guard page lies below)
    uint3 tid;
    int lane = 0, warp = 0;
    Relaxed<Wait> wait{Wait::None};
    Relaxed<unsigned> wait_gen{0};
#ifdef PRFL_EMU_TSAN
    void* tsan = nullptr;
#endif
};

// Per-warp rendezvous: a generation-counted barrier and two scratch rows (double buffering: a
// lane can be at most one collective ahead of another, so alternating rows never overwrite a
// value that a slower lane has still to read).
struct Warp {
    int size = 0;           // threads of the block in this warp
    Relaxed<int> live{0};   // of them, not exited
    Relaxed<int> arrived{0};
    Relaxed<unsigned> gen{0};
    alignas(16) unsigned char slot[2][kWarp][64];
};

typedef void (*Thunk)(void**);

struct Kernel {
    const char* name;
    Thunk thunk;
};

Kernel g_kernels[kMaxKernels];
int g_kernel_count = 0;

struct Registrar {
    Registrar(const char* name, Thunk t) {
        if (g_kernel_count < kMaxKernels) g_kernels[g_kernel_count++] = {name, t};
    }
};

// The launch in progress (one per module at a time: g_launch_mutex).
std::mutex g_launch_mutex;
Fiber g_fibers[kMaxThreads];
int g_fiber_stacks = 0;  // fibers with a stack so far (kept for later launches)
Warp g_warps[kMaxThreads / kWarp];
Relaxed<Fiber*> g_cur{nullptr};
dim3 g_block_idx, g_block_dim, g_grid_dim;
int g_threads = 0;
Relaxed<int> g_live{0}, g_bar_arrived{0};
Relaxed<unsigned> g_bar_gen{0};
unsigned char* g_dyn_smem = nullptr;
size_t g_dyn_smem_bytes = 0;
void** g_params = nullptr;
Thunk g_thunk = nullptr;
void* g_sched_sp = nullptr;
Relaxed<bool> g_failed{false};
char g_error[512];
// Addresses used only as TSan synchronisation objects.
char g_sync_block_start, g_sync_block_end, g_sync_barrier;
#ifdef PRFL_EMU_TSAN
Relaxed<void*> g_sched_tsan{nullptr};
#endif
#ifdef PRFL_EMU_ASAN
const void* g_sched_stack_bottom = nullptr;
size_t g_sched_stack_size = 0;
#endif

// The runtime's own functions (scheduling, barrier counts, exchanges of register values) are
// not instrumented by TSan: they touch no kernel memory, their ordering is given to TSan by the
// explicit annotations, and instrumenting them would only slow every collective down.
#define PRFL_EMU_RUNTIME __attribute__((no_sanitize("thread")))

// Copies to and from a warp's scratch, invisible to TSan. The scratch is the runtime's own
// exchange buffer, ordered by the warp barrier (whose release/acquire annotations TSan does
// see); instrumenting it would only make TSan's shadow bookkeeping the slowest part of a
// collective (every lane reads the same cells). Kernel memory is never copied through here.
PRFL_EMU_RUNTIME inline void scratch_copy(void* dst, const void* src,
                                                                size_t n) {
    unsigned char* d = static_cast<unsigned char*>(dst);
    const unsigned char* s = static_cast<const unsigned char*>(src);
    for (size_t i = 0; i < n; ++i) d[i] = s[i];
}

inline void tsan_release(void* a) {
#ifdef PRFL_EMU_TSAN
    __tsan_release(a);
#else
    (void)a;
#endif
}
inline void tsan_acquire(void* a) {
#ifdef PRFL_EMU_TSAN
    __tsan_acquire(a);
#else
    (void)a;
#endif
}

// The first error of the launch wins; the kernel carries on with harmless values.
inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void fail(const char* fmt, ...) {
    if (g_failed) return;
    g_failed = true;
    int n = std::snprintf(g_error, sizeof g_error, "block (%u,%u,%u) thread (%u,%u,%u): ",
                          g_block_idx.x, g_block_idx.y, g_block_idx.z,
                          g_cur ? g_cur->tid.x : 0, g_cur ? g_cur->tid.y : 0,
                          g_cur ? g_cur->tid.z : 0);
    if (n < 0) n = 0;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(g_error + n, sizeof g_error - (size_t)n, fmt, ap);
    va_end(ap);
}

// Fiber -> scheduler.
PRFL_EMU_RUNTIME inline void yield() {
    Fiber* f = g_cur;
#ifdef PRFL_EMU_TSAN
    __tsan_switch_to_fiber(g_sched_tsan, 1 /* __tsan_switch_to_fiber_no_sync */);
#endif
#ifdef PRFL_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, g_sched_stack_bottom, g_sched_stack_size);
#endif
    prfl_emu_swap(&f->sp, g_sched_sp);
#ifdef PRFL_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    g_cur = f;
}

PRFL_EMU_RUNTIME inline void warp_complete(Warp& w) {
    w.arrived = 0;
    ++w.gen;
}

PRFL_EMU_RUNTIME inline void block_barrier_complete() {
    g_bar_arrived = 0;
    ++g_bar_gen;
}

// __syncthreads: every live thread of the block arrives before any leaves.
PRFL_EMU_RUNTIME inline void syncthreads() {
    tsan_release(&g_sync_barrier);
    const unsigned gen = g_bar_gen;
    if (++g_bar_arrived == g_live) {
        block_barrier_complete();
    } else {
        g_cur->wait = Wait::Block;
        g_cur->wait_gen = gen;
        yield();
    }
    tsan_acquire(&g_sync_barrier);
}

// The calling lane's warp after every live lane has deposited `n` bytes of `mine`; returns the
// scratch row holding all lanes' deposits (valid until the lane's next collective).
// `orders_memory`: whether the collective also orders the lanes' memory accesses for TSan. Only
// __syncwarp does in CUDA; shuffles, mma and ldmatrix exchange registers and are no memory
// barrier, so a kernel that relies on them to order shared memory is reported.
PRFL_EMU_RUNTIME inline const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t n,
                                          bool orders_memory = false) {
    Fiber* f = g_cur;
    Warp& w = g_warps[f->warp];
    if (mask != 0xffffffffu) fail("warp collective with mask %#x (only full warps are emulated)", mask);
    if (w.size != kWarp) fail("warp collective in a partial warp of %d threads", w.size);
    const unsigned row = w.gen & 1u;
    scratch_copy(w.slot[row][f->lane], mine, n);
    if (orders_memory) tsan_release(&w);
    const unsigned gen = w.gen;
    if (++w.arrived == w.live) {
        if (w.live != w.size) fail("warp collective after %d lanes of the warp exited", w.size - w.live);
        warp_complete(w);
    } else {
        f->wait = Wait::Warp;
        f->wait_gen = gen;
        yield();
    }
    if (orders_memory) tsan_acquire(&w);
    return &w.slot[row][0][0];
}

// A fiber's whole life: run the kernel for this thread, then leave the barriers it would hold up.
extern "C" __attribute__((visibility("hidden"))) void prfl_emu_fiber_main() {
#ifdef PRFL_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
    tsan_acquire(&g_sync_block_start);
    g_thunk(g_params);
    Fiber* f = g_cur;
    Warp& w = g_warps[f->warp];
    --g_live;
    --w.live;
    if (g_bar_arrived > 0 && g_bar_arrived == g_live) block_barrier_complete();
    if (w.arrived > 0 && w.arrived == w.live) {
        fail("warp collective after %d lanes of the warp exited", w.size - w.live);
        warp_complete(w);
    }
    f->wait = Wait::Done;
    tsan_release(&g_sync_block_end);
#ifdef PRFL_EMU_TSAN
    __tsan_switch_to_fiber(g_sched_tsan, 1);
#endif
#ifdef PRFL_EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, g_sched_stack_bottom, g_sched_stack_size);
#endif
    void* dead;
    prfl_emu_swap(&dead, g_sched_sp);
    __builtin_trap();  // a finished fiber is never resumed
}

// The first `ret` of a fresh fiber lands here with the stack as at a function's entry
// (rsp = 8 mod 16); the push realigns it for the call (rsp = 0 mod 16 at the call) and ends
// the frame-pointer chain for unwinders.
extern "C" void prfl_emu_fiber_entry();
__asm__(R"(
    .text
    .globl prfl_emu_fiber_entry
    .hidden prfl_emu_fiber_entry
    .type prfl_emu_fiber_entry,@function
    .p2align 4
prfl_emu_fiber_entry:
    pushq $0
    call prfl_emu_fiber_main
    ud2
    .size prfl_emu_fiber_entry, .-prfl_emu_fiber_entry
)");

inline bool ensure_stacks(int n) {
    while (g_fiber_stacks < n) {
        const size_t page = 4096;
        void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return false;
        mprotect(m, page, PROT_NONE);  // overflow = SIGSEGV, not silent corruption
        Fiber& f = g_fibers[g_fiber_stacks++];
        f.stack = static_cast<char*>(m) + page;
#ifdef PRFL_EMU_TSAN
        f.tsan = __tsan_create_fiber(0);
#endif
    }
    return true;
}

// A fresh context on f's stack that starts in prfl_emu_fiber_entry (layout of prfl_emu_swap).
inline void prepare(Fiber& f) {
#ifdef PRFL_EMU_ASAN
    __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
    uintptr_t top = ((uintptr_t)(f.stack + kStackBytes)) & ~(uintptr_t)15;
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                        // fake return address of the entry
    *--sp = (uint64_t)(uintptr_t)&prfl_emu_fiber_entry;  // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = 0;            // rbp rbx r12 r13 r14 r15
    uint32_t csr[2];
    __asm__ volatile("stmxcsr %0" : "=m"(csr[0]));
    __asm__ volatile("fnstcw %0" : "=m"(csr[1]));
    *--sp = (uint64_t)csr[0] | ((uint64_t)(csr[1] & 0xffff) << 32);
    f.sp = sp;
    f.wait = Wait::None;
    f.wait_gen = 0;
}

inline void resume(Fiber& f) {
    g_cur = &f;
    void* const sp = f.sp;  // read as the scheduler, before TSan switches to the fiber
#ifdef PRFL_EMU_TSAN
    __tsan_switch_to_fiber(f.tsan, 1);
#endif
#ifdef PRFL_EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
    prfl_emu_swap(&g_sched_sp, sp);
#ifdef PRFL_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    g_cur = nullptr;
}

// Runs one block to completion; false on a deadlock.
inline bool run_block() {
    const int n = g_threads;
    g_live = n;
    g_bar_arrived = 0;
    const int warps = (n + kWarp - 1) / kWarp;
    for (int w = 0; w < warps; ++w) {
        g_warps[w].size = (w + 1) * kWarp <= n ? kWarp : n - w * kWarp;
        g_warps[w].live = g_warps[w].size;
        g_warps[w].arrived = 0;
    }
    int i = 0;
    for (unsigned z = 0; z < g_block_dim.z; ++z)
        for (unsigned y = 0; y < g_block_dim.y; ++y)
            for (unsigned x = 0; x < g_block_dim.x; ++x, ++i) {
                Fiber& f = g_fibers[i];
                prepare(f);
                f.tid = {x, y, z};
                f.lane = i % kWarp;
                f.warp = i / kWarp;
            }
    tsan_release(&g_sync_block_start);
    int done = 0;
    while (done < n) {
        bool progress = false;
        for (int t = 0; t < n; ++t) {
            Fiber& f = g_fibers[t];
            if (f.wait == Wait::Done) continue;
            if (f.wait == Wait::Block && f.wait_gen == g_bar_gen) continue;
            if (f.wait == Wait::Warp && f.wait_gen == g_warps[f.warp].gen) continue;
            f.wait = Wait::None;
            resume(f);
            progress = true;
            if (f.wait == Wait::Done) ++done;
        }
        if (!progress) {
            fail("deadlock: %d threads wait at barriers that can never complete "
                 "(__syncthreads or a warp collective in divergent code)",
                 n - done);
            return false;
        }
    }
    tsan_acquire(&g_sync_block_end);
    return true;
}

// ------------------------------------------------------------------ parameter unpacking

template <class... A, size_t... I>
inline void invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <class... A>
inline void invoke(void (*f)(A...), void** p) {
    invoke(f, p, std::index_sequence_for<A...>{});
}

template <auto F>
void thunk(void** p) {
    invoke(F, p);
}

}  // namespace prfl_emu
}  // namespace

// ------------------------------------------------------------------ CUDA's built-in variables

#define threadIdx (prfl_emu::g_cur->tid)
#define blockIdx (prfl_emu::g_block_idx)
#define blockDim (prfl_emu::g_block_dim)
#define gridDim (prfl_emu::g_grid_dim)
#define warpSize 32

// ------------------------------------------------------------------ barriers and collectives

inline void __syncthreads() { prfl_emu::syncthreads(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    const char none = 0;
    prfl_emu::warp_exchange(mask, &none, 1, true);
}

template <class T>
PRFL_EMU_RUNTIME inline T prfl_emu_shfl_from(unsigned mask, T v, int (*src_of)(int lane, int arg, int width),
                            int arg, int width) {
    static_assert(sizeof(T) <= 64, "shuffle of a value wider than the scratch");
    const unsigned char* row = prfl_emu::warp_exchange(mask, &v, sizeof(T));
    const int lane = prfl_emu::g_cur->lane;
    const int src = src_of(lane, arg, width);
    T r;
    prfl_emu::scratch_copy(&r, row + (size_t)src * 64, sizeof(T));
    return r;
}

// Source lanes per the CUDA programming guide: width splits the warp into segments; a source
// outside the caller's segment returns the caller's own value.
inline int prfl_emu_src_xor(int lane, int m, int width) {
    const int s = lane ^ m;
    return (s / width == lane / width) ? s : lane;
}
inline int prfl_emu_src_idx(int lane, int s, int width) {
    return (lane / width) * width + ((s % width) + width) % width;
}
inline int prfl_emu_src_down(int lane, int d, int width) {
    const int s = lane + d;
    return (s / width == lane / width) ? s : lane;
}
inline int prfl_emu_src_up(int lane, int d, int width) {
    const int s = lane - d;
    return (s >= 0 && s / width == lane / width) ? s : lane;
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
    return prfl_emu_shfl_from(mask, v, prfl_emu_src_xor, m, width);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return prfl_emu_shfl_from(mask, v, prfl_emu_src_idx, src, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return prfl_emu_shfl_from(mask, v, prfl_emu_src_down, (int)d, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return prfl_emu_shfl_from(mask, v, prfl_emu_src_up, (int)d, width);
}

// ------------------------------------------------------------------ shared memory

// The block's dynamic shared memory (DYN_SMEM in the kernel sources).
inline unsigned char* prfl_emu_dynamic_smem() { return prfl_emu::g_dyn_smem; }

// A shared-window address: the byte offset in the block's dynamic shared memory (the only
// shared memory the kernels address through the shared window).
inline size_t __cvta_generic_to_shared(const void* p) {
    const unsigned char* b = prfl_emu::g_dyn_smem;
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (b == nullptr || q < b || q > b + prfl_emu::g_dyn_smem_bytes) {
        prfl_emu::fail("__cvta_generic_to_shared of %p, outside the block's %zu bytes of dynamic "
                       "shared memory",
                       p, prfl_emu::g_dyn_smem_bytes);
        return 0;
    }
    return (size_t)(q - b);
}

// ------------------------------------------------------------------ inline PTX

inline unsigned short prfl_emu_f32_to_bf16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // canonical NaN
    u += 0x7fffu + ((u >> 16) & 1u);                   // round to nearest, ties to even
    return (unsigned short)(u >> 16);
}

inline float prfl_emu_bf16_to_f32(unsigned short h) { return __uint_as_float((unsigned)h << 16); }

// cvt.rn.bf16x2.f32 d, a, b: a (rounded) in the upper half of d, b in the lower half.
inline unsigned prfl_emu_cvt_rn_bf16x2_f32(float a, float b) {
    return ((unsigned)prfl_emu_f32_to_bf16_rn(a) << 16) | prfl_emu_f32_to_bf16_rn(b);
}

// ex2.approx.ftz.f32: 2^a with subnormal inputs and results flushed to (signed) zero.
inline float prfl_emu_ex2_approx_ftz_f32(float a) {
    if (std::fpclassify(a) == FP_SUBNORMAL) a = std::copysign(0.0f, a);
    float r = std::exp2(a);
    if (std::fpclassify(r) == FP_SUBNORMAL) r = std::copysign(0.0f, r);
    return r;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3}
// with d = c (in place). Fragments per the PTX ISA (groupID = lane >> 2, tig = lane % 4; the
// lower 16 bits of a register hold the element with the smaller column / row index):
//   A (16 x 16, row): a0: (groupID, 2 tig + {0,1})      a1: (groupID + 8, 2 tig + {0,1})
//                     a2: (groupID, 2 tig + 8 + {0,1})  a3: (groupID + 8, 2 tig + 8 + {0,1})
//   B (16 x 8, col):  b0: (2 tig + {0,1}, groupID)      b1: (2 tig + 8 + {0,1}, groupID)
//   C, D (16 x 8):    c0, c1: (groupID, 2 tig + {0,1})  c2, c3: (groupID + 8, 2 tig + {0,1})
// Registers only (no kernel memory): not instrumented by TSan, which would otherwise spend
// most of an attention run on this function's locals.
PRFL_EMU_RUNTIME inline void prfl_emu_mma_m16n8k16_bf16(float* c, unsigned a0, unsigned a1, unsigned a2,
                                       unsigned a3, unsigned b0, unsigned b1) {
    const unsigned mine[6] = {a0, a1, a2, a3, b0, b1};
    const unsigned char* row = prfl_emu::warp_exchange(0xffffffffu, mine, sizeof mine);
    const int lane = prfl_emu::g_cur->lane, g = lane >> 2, t = lane & 3;
    // What this lane's outputs need: rows g and g + 8 of A, held by lanes 4 g + tig as
    // a0 / a2 (row g) and a1 / a3 (row g + 8); columns 2 t and 2 t + 1 of B, held by lanes
    // 4 n + tig as b0 (k < 8) and b1 (k >= 8).
    unsigned ar[4][4], br[2][4][2];
    for (int tig = 0; tig < 4; ++tig) {
        prfl_emu::scratch_copy(ar[tig], row + (size_t)(4 * g + tig) * 64, sizeof ar[tig]);
        for (int j = 0; j < 2; ++j)
            prfl_emu::scratch_copy(br[j][tig], row + (size_t)(4 * (2 * t + j) + tig) * 64 + 16,
                                   sizeof br[j][tig]);
    }
    auto half = [](unsigned v, int h) { return prfl_emu_bf16_to_f32((unsigned short)(v >> (16 * h))); };
    for (int e = 0; e < 4; ++e) {
        const int upper_row = e >> 1, j = e & 1;
        float acc = c[e];
        for (int k = 0; k < 16; ++k) {
            const int tig = (k & 7) >> 1, h = k & 1, upper = k >> 3;
            const float av = half(ar[tig][upper_row + 2 * upper], h);
            const float bv = half(br[j][tig][upper], h);
            acc += av * bv;
        }
        c[e] = acc;
    }
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {r0..r3}, [addr]: lanes 8 i .. 8 i + 7 give
// the shared addresses of rows 0..7 of matrix i (16 bytes each, 16-byte aligned). Without .trans
// lane l would receive row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of matrix i in r_i; with
// .trans it receives the transposed positions: elements (2 (l % 4), l / 4) and
// (2 (l % 4) + 1, l / 4), the first in the lower half.
inline void prfl_emu_ldmatrix_x4_trans(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2,
                                       unsigned& r3) {
    const unsigned char* row = prfl_emu::warp_exchange(0xffffffffu, &addr, sizeof addr);
    const int lane = prfl_emu::g_cur->lane;
    unsigned out[4];
    for (int i = 0; i < 4; ++i) {
        unsigned short e[2];
        for (int h = 0; h < 2; ++h) {
            const int mrow = 2 * (lane & 3) + h, mcol = lane >> 2;
            unsigned a;
            prfl_emu::scratch_copy(&a, row + (size_t)(8 * i + mrow) * 64, sizeof a);
            if ((a & 15u) != 0 || (size_t)a + 16 > prfl_emu::g_dyn_smem_bytes) {
                prfl_emu::fail("ldmatrix row address %#x (lane %d) is not a 16-byte aligned row "
                               "inside the %zu bytes of dynamic shared memory",
                               a, 8 * i + mrow, prfl_emu::g_dyn_smem_bytes);
                e[h] = 0;
                continue;
            }
            std::memcpy(&e[h], prfl_emu::g_dyn_smem + a + 2 * mcol, 2);
        }
        out[i] = (unsigned)e[0] | ((unsigned)e[1] << 16);
    }
    r0 = out[0];
    r1 = out[1];
    r2 = out[2];
    r3 = out[3];
}

// ------------------------------------------------------------------ the module's entry points

// One registration per kernel, appended to the source by the stand-in NVRTC.
#define PRFL_EMU_KERNEL(name) \
    static const prfl_emu::Registrar prfl_emu_reg_##name(#name, &prfl_emu::thunk<&name>);

// Launch outcomes (the stand-in driver maps them to CUresult values).
#define PRFL_EMU_OK 0
#define PRFL_EMU_INVALID_VALUE 1
#define PRFL_EMU_LAUNCH_FAILED 2
#define PRFL_EMU_OUT_OF_MEMORY 3

extern "C" __attribute__((visibility("default"))) int prfl_emu_kernel_count() {
    return prfl_emu::g_kernel_count;
}

extern "C" __attribute__((visibility("default"))) const char* prfl_emu_kernel_name(int i) {
    return i >= 0 && i < prfl_emu::g_kernel_count ? prfl_emu::g_kernels[i].name : nullptr;
}

// Runs kernel `index` on the grid, like cuLaunchKernel (the caller has validated the
// dimensions against the device limits). On failure writes a message to err.
extern "C" __attribute__((visibility("default"))) int prfl_emu_launch(
    int index, const unsigned grid[3], const unsigned block[3], size_t smem_bytes, void** params,
    char* err, size_t errlen) {
    using namespace prfl_emu;
    auto report = [&](const char* msg) {
        if (err && errlen) std::snprintf(err, errlen, "%s", msg);
    };
    if (index < 0 || index >= g_kernel_count) {
        report("no such kernel in this module");
        return PRFL_EMU_INVALID_VALUE;
    }
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads == 0 || threads > (unsigned long long)kMaxThreads || grid[0] == 0 || grid[1] == 0 ||
        grid[2] == 0) {
        report("invalid launch dimensions");
        return PRFL_EMU_INVALID_VALUE;
    }
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    if (!ensure_stacks((int)threads)) {
        report("cannot map the fiber stacks");
        return PRFL_EMU_OUT_OF_MEMORY;
    }
#ifdef PRFL_EMU_TSAN
    g_sched_tsan = __tsan_get_current_fiber();
#endif
    g_thunk = g_kernels[index].thunk;
    g_params = params;
    g_grid_dim = {grid[0], grid[1], grid[2]};
    g_block_dim = {block[0], block[1], block[2]};
    g_threads = (int)threads;
    g_failed = false;
    g_error[0] = 0;
    bool ok = true;
    for (unsigned bz = 0; ok && bz < grid[2]; ++bz)
        for (unsigned by = 0; ok && by < grid[1]; ++by)
            for (unsigned bx = 0; ok && bx < grid[0]; ++bx) {
                g_block_idx = {bx, by, bz};
                void* smem = nullptr;
                // Exactly the requested bytes (an overrun is a heap-buffer-overflow under ASan).
                if (posix_memalign(&smem, 16, smem_bytes) != 0) {
                    report("out of host memory for the dynamic shared memory");
                    return PRFL_EMU_OUT_OF_MEMORY;
                }
                std::memset(smem, 0xff, smem_bytes);
                g_dyn_smem = static_cast<unsigned char*>(smem);
                g_dyn_smem_bytes = smem_bytes;
                ok = run_block() && !g_failed;
                g_dyn_smem = nullptr;
                g_dyn_smem_bytes = 0;
                std::free(smem);
            }
    if (!ok || g_failed) {
        report(g_error);
        return PRFL_EMU_LAUNCH_FAILED;
    }
    return PRFL_EMU_OK;
}
