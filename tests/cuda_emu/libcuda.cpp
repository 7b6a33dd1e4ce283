// Stand-in CUDA driver (libcuda.so) for the emulated device: the entry points cudarc and prfl
// call, executed synchronously on the host.
// - Device memory is host memory: each allocation its own heap block (ASan sees overruns),
//   filled with 0xff so that unwritten floats read as NaN; a device pointer is its address.
//   Copies and memsets check that the range lies inside one live allocation.
// - Streams, events and memory pools are bookkeeping: every operation completes before its
//   call returns, so ordering bugs between streams are not caught (said in README.md).
// - A module image is the shared object the stand-in NVRTC built; cuModuleLoadData writes it
//   to a temporary file and dlopens it; cuLaunchKernel validates the launch like a GPU (block
//   and grid limits, dynamic shared memory against the function's opt-in limit) and runs the
//   module's `prfl_emu_launch`.
// - The device: compute capability 9.0, 2 multiprocessors (small grid-stride grids), 16 GiB,
//   1024 threads per block, 48 KiB of dynamic shared memory by default and 227 KiB opt-in.
// - Invalid handles and arguments are CUDA error codes, never crashes.
//
// Build: g++ -std=c++17 -O2 -fPIC -shared -Wl,-soname,libcuda.so libcuda.cpp -o libcuda.so -ldl
#include <dlfcn.h>
#include <elf.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

namespace {

constexpr int kDriverVersion = 13000;
constexpr int kSmCount = 2;
constexpr size_t kTotalMemory = 16ull << 30;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultDynSmem = 48 * 1024;
constexpr int kOptinSmem = 227 * 1024;
constexpr const char* kName = "prfl emulated device (CPU)";

// Handles are pointers to these; `magic` tells a live object of the right kind from anything
// else a caller may pass (the sets below hold the live ones).
struct Context { int device = 0; int refs = 0; };
struct Stream { unsigned flags = 0; };
struct Event { unsigned flags = 0; bool recorded = false; double ms = 0; };
struct Module { void* handle = nullptr; std::string path; };
struct Function {
    Module* module = nullptr;
    int index = -1;
    std::string name;
    int max_dyn_smem = kDefaultDynSmem;
};
struct MemPool { int dummy = 0; };

typedef int (*LaunchFn)(int, const unsigned*, const unsigned*, size_t, void**, char*, size_t);
typedef int (*CountFn)();
typedef const char* (*NameFn)(int);

std::mutex g_mutex;
bool g_initialised = false;
Context g_primary;
std::set<Context*> g_contexts = {&g_primary};
std::set<Stream*> g_streams;
std::set<Event*> g_events;
std::set<Module*> g_modules;
std::set<Function*> g_functions;
MemPool g_pool;
// Live device allocations by address, and host (page-locked) ones.
std::map<uintptr_t, size_t> g_device_allocs;
std::map<uintptr_t, size_t> g_host_allocs;
size_t g_allocated = 0;
thread_local Context* t_current = nullptr;

// A lost device (tests of what prfl does after a sticky error such as an illegal address or a
// fallen-off-the-bus GPU): once `prfl_emu_lose_device` was called, every call that needs the
// context answers CUDA_ERROR_LAUNCH_FAILED, frees and destroys included, as a real context does
// after a sticky error. Error strings, versions and device queries keep working.
std::atomic<bool> g_lost{false};

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

bool trace() {
    static const bool on = std::getenv("PRFL_EMU_TRACE") != nullptr;
    return on;
}

// Streams: 0 (legacy default), CU_STREAM_LEGACY (1), CU_STREAM_PER_THREAD (2), or a live one.
bool valid_stream(void* s) {
    if (s == nullptr || s == (void*)1 || s == (void*)2) return true;
    return g_streams.count(static_cast<Stream*>(s)) != 0;
}

// Whether [p, p + n) lies inside one live device allocation.
bool device_range(CUdeviceptr p, size_t n) {
    auto it = g_device_allocs.upper_bound((uintptr_t)p);
    if (it == g_device_allocs.begin()) return false;
    --it;
    const uintptr_t base = it->first;
    return (uintptr_t)p >= base && (uintptr_t)p - base <= it->second &&
           n <= it->second - ((uintptr_t)p - base);
}

CUresult alloc_device(CUdeviceptr* out, size_t bytes) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;  // as the real cuMemAlloc
    if (bytes > kTotalMemory - g_allocated) return CUDA_ERROR_OUT_OF_MEMORY;
    void* p = nullptr;
    // 256-byte alignment, as cudaMalloc guarantees; the size is exact.
    if (posix_memalign(&p, 256, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    std::memset(p, 0xff, bytes);
    g_device_allocs[(uintptr_t)p] = bytes;
    g_allocated += bytes;
    *out = (CUdeviceptr)(uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult free_device(CUdeviceptr p) {
    if (p == 0) return CUDA_SUCCESS;
    auto it = g_device_allocs.find((uintptr_t)p);
    if (it == g_device_allocs.end()) return CUDA_ERROR_INVALID_VALUE;
    g_allocated -= it->second;
    g_device_allocs.erase(it);
    std::free((void*)(uintptr_t)p);
    return CUDA_SUCCESS;
}

// The size of an ELF image from its headers (cuModuleLoadData gets no length).
bool elf_size(const void* image, size_t* size) {
    const unsigned char* b = static_cast<const unsigned char*>(image);
    if (std::memcmp(b, ELFMAG, SELFMAG) != 0 || b[EI_CLASS] != ELFCLASS64) return false;
    Elf64_Ehdr eh;
    std::memcpy(&eh, b, sizeof eh);
    // Headers that do not describe a plausible shared object are refused before anything they
    // point at is read.
    const size_t limit = (size_t)1 << 30;
    if (eh.e_type != ET_DYN || eh.e_phentsize != sizeof(Elf64_Phdr) ||
        eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_phoff > limit || eh.e_shoff > limit)
        return false;
    size_t end = sizeof eh;
    auto grow = [&](size_t e) { end = e > end ? e : end; };
    grow((size_t)eh.e_phoff + (size_t)eh.e_phnum * eh.e_phentsize);
    grow((size_t)eh.e_shoff + (size_t)eh.e_shnum * eh.e_shentsize);
    for (int i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph;
        std::memcpy(&ph, b + eh.e_phoff + (size_t)i * eh.e_phentsize, sizeof ph);
        grow((size_t)ph.p_offset + ph.p_filesz);
    }
    for (int i = 0; i < eh.e_shnum; ++i) {
        Elf64_Shdr sh;
        std::memcpy(&sh, b + eh.e_shoff + (size_t)i * eh.e_shentsize, sizeof sh);
        if (sh.sh_type != SHT_NOBITS) grow((size_t)sh.sh_offset + sh.sh_size);
    }
    *size = end;
    return true;
}

const char* error_name(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_UNKNOWN: return "CUDA_ERROR_UNKNOWN";
    default: return nullptr;
    }
}

const char* error_text(CUresult r) {
    switch (r) {
    case CUDA_SUCCESS: return "no error";
    case CUDA_ERROR_INVALID_VALUE: return "invalid argument";
    case CUDA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case CUDA_ERROR_NOT_INITIALIZED: return "initialization error";
    case CUDA_ERROR_NO_DEVICE: return "no CUDA-capable device is detected";
    case CUDA_ERROR_INVALID_DEVICE: return "invalid device ordinal";
    case CUDA_ERROR_INVALID_IMAGE: return "device kernel image is invalid";
    case CUDA_ERROR_INVALID_CONTEXT: return "invalid device context";
    case CUDA_ERROR_INVALID_HANDLE: return "invalid resource handle";
    case CUDA_ERROR_NOT_FOUND: return "named symbol not found";
    case CUDA_ERROR_NOT_READY: return "device not ready";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
    case CUDA_ERROR_LAUNCH_FAILED: return "unspecified launch failure";
    case CUDA_ERROR_NOT_SUPPORTED: return "operation not supported";
    case CUDA_ERROR_UNKNOWN: return "unknown error";
    default: return nullptr;
    }
}

// Device attributes (CUdevice_attribute numbers): an H100-like device with 2 multiprocessors.
bool attribute(int a, int* v) {
    switch (a) {
    case 1: *v = kMaxThreadsPerBlock; return true;  // MAX_THREADS_PER_BLOCK
    case 2: *v = 1024; return true;                 // MAX_BLOCK_DIM_X
    case 3: *v = 1024; return true;                 // MAX_BLOCK_DIM_Y
    case 4: *v = 64; return true;                   // MAX_BLOCK_DIM_Z
    case 5: *v = 2147483647; return true;           // MAX_GRID_DIM_X
    case 6: *v = 65535; return true;                // MAX_GRID_DIM_Y
    case 7: *v = 65535; return true;                // MAX_GRID_DIM_Z
    case 8: *v = kDefaultDynSmem; return true;      // MAX_SHARED_MEMORY_PER_BLOCK
    case 9: *v = 65536; return true;                // TOTAL_CONSTANT_MEMORY
    case 10: *v = 32; return true;                  // WARP_SIZE
    case 11: *v = 2147483647; return true;          // MAX_PITCH
    case 12: *v = 65536; return true;               // MAX_REGISTERS_PER_BLOCK
    case 13: *v = 1980000; return true;             // CLOCK_RATE (kHz)
    case 14: *v = 512; return true;                 // TEXTURE_ALIGNMENT
    case 15: *v = 1; return true;                   // GPU_OVERLAP
    case 16: *v = kSmCount; return true;            // MULTIPROCESSOR_COUNT
    case 17: *v = 0; return true;                   // KERNEL_EXEC_TIMEOUT
    case 18: *v = 0; return true;                   // INTEGRATED
    case 19: *v = 1; return true;                   // CAN_MAP_HOST_MEMORY
    case 20: *v = 0; return true;                   // COMPUTE_MODE (default)
    case 31: *v = 1; return true;                   // CONCURRENT_KERNELS
    case 32: *v = 0; return true;                   // ECC_ENABLED
    case 33: *v = 0; return true;                   // PCI_BUS_ID
    case 34: *v = 0; return true;                   // PCI_DEVICE_ID
    case 36: *v = 2619000; return true;             // MEMORY_CLOCK_RATE
    case 37: *v = 5120; return true;                // GLOBAL_MEMORY_BUS_WIDTH
    case 38: *v = 50 * 1024 * 1024; return true;    // L2_CACHE_SIZE
    case 39: *v = 2048; return true;                // MAX_THREADS_PER_MULTIPROCESSOR
    case 40: *v = 2; return true;                   // ASYNC_ENGINE_COUNT
    case 41: *v = 1; return true;                   // UNIFIED_ADDRESSING
    case 50: *v = 0; return true;                   // PCI_DOMAIN_ID
    case 75: *v = 9; return true;                   // COMPUTE_CAPABILITY_MAJOR
    case 76: *v = 0; return true;                   // COMPUTE_CAPABILITY_MINOR
    case 81: *v = 228 * 1024; return true;          // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
    case 82: *v = 65536; return true;               // MAX_REGISTERS_PER_MULTIPROCESSOR
    case 83: *v = 1; return true;                   // MANAGED_MEMORY
    case 95: *v = 1; return true;                   // COOPERATIVE_LAUNCH
    case 97: *v = kOptinSmem; return true;          // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    case 106: *v = 32; return true;                 // MAX_BLOCKS_PER_MULTIPROCESSOR
    case 115: *v = 1; return true;                  // MEMORY_POOLS_SUPPORTED
    default:
        if (a > 0 && a < 160) {
            *v = 0;  // a real attribute this device does not have (or has as 0)
            return true;
        }
        return false;
    }
}

}  // namespace

extern "C" {

CUresult cuGetErrorName(CUresult r, const char** out) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    const char* s = error_name(r);
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *out = s;
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult r, const char** out) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    const char* s = error_text(r);
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *out = s;
    return CUDA_SUCCESS;
}

CUresult cuInit(unsigned flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_initialised = true;
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = kDriverVersion;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    *n = 1;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice d) {
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, (size_t)len, "%s", kName);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(unsigned char* uuid, CUdevice d) {
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    const char id[16] = {'p', 'r', 'f', 'l', '-', 'e', 'm', 'u', 0, 0, 0, 0, 0, 0, 0, 1};
    std::memcpy(uuid, id, 16);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid_v2(unsigned char* uuid, CUdevice d) { return cuDeviceGetUuid(uuid, d); }

CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice d) {
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = kTotalMemory;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attrib, CUdevice d) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    return attribute(attrib, v) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice d) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> lock(g_mutex);
    ++g_primary.refs;
    *ctx = &g_primary;
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_primary.refs <= 0) return CUDA_ERROR_INVALID_CONTEXT;
    --g_primary.refs;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(void* ctx) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (ctx && !g_contexts.count(static_cast<Context*>(ctx))) return CUDA_ERROR_INVALID_CONTEXT;
    t_current = static_cast<Context*>(ctx);
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(void** ctx) {
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = t_current;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* d) {
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    *d = 0;
    return CUDA_SUCCESS;
}

// Everything is synchronous: there is never outstanding work.
CUresult cuCtxSynchronize() {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    return t_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

CUresult cuCtxSetFlags(unsigned) { return t_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }

CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    std::lock_guard<std::mutex> lock(g_mutex);
    *total = kTotalMemory;
    *free_bytes = kTotalMemory - g_allocated;
    return CUDA_SUCCESS;
}

// ------------------------------------------------------------------ memory

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    std::lock_guard<std::mutex> lock(g_mutex);
    return alloc_device(p, bytes);
}

CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    return alloc_device(p, bytes);
}

CUresult cuMemFree_v2(CUdeviceptr p) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    return free_device(p);
}

CUresult cuMemFreeAsync(CUdeviceptr p, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    return free_device(p);
}

CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice d) {
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    if (d != 0) return CUDA_ERROR_INVALID_DEVICE;
    *pool = &g_pool;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetMemPool(void** pool, CUdevice d) { return cuDeviceGetDefaultMemPool(pool, d); }

CUresult cuMemPoolSetAttribute(void* pool, int, void* value) {
    if (pool != &g_pool || !value) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

CUresult cuMemPoolGetAttribute(void* pool, int, void* value) {
    if (pool != &g_pool || !value) return CUDA_ERROR_INVALID_VALUE;
    std::memset(value, 0, sizeof(unsigned long long));
    return CUDA_SUCCESS;
}

CUresult cuMemPoolTrimTo(void* pool, size_t) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    return pool == &g_pool ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!pp || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    void* p = nullptr;
    if (posix_memalign(&p, 4096, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_host_allocs[(uintptr_t)p] = bytes;
    *pp = p;
    return CUDA_SUCCESS;
}

CUresult cuMemAllocHost_v2(void** pp, size_t bytes) { return cuMemHostAlloc(pp, bytes, 0); }

CUresult cuMemFreeHost(void* p) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_host_allocs.find((uintptr_t)p);
    if (it == g_host_allocs.end()) return CUDA_ERROR_INVALID_VALUE;
    g_host_allocs.erase(it);
    std::free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (n == 0) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!src || !device_range(dst, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memcpy((void*)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (n == 0) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!dst || !device_range(src, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memcpy(dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (n == 0) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!device_range(dst, n) || !device_range(src, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    }
    return cuMemcpyHtoD_v2(dst, src, n);
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    }
    return cuMemcpyDtoH_v2(dst, src, n);
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    }
    return cuMemcpyDtoD_v2(dst, src, n);
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (n == 0) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!device_range(dst, n)) return CUDA_ERROR_INVALID_VALUE;
    std::memset((void*)(uintptr_t)dst, v, n);
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    }
    return cuMemsetD8_v2(dst, v, n);
}

CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (n == 0) return CUDA_SUCCESS;
    std::lock_guard<std::mutex> lock(g_mutex);
    if ((dst & 3) != 0 || n > SIZE_MAX / 4 || !device_range(dst, n * 4))
        return CUDA_ERROR_INVALID_VALUE;
    unsigned* p = (unsigned*)(uintptr_t)dst;
    for (size_t i = 0; i < n; ++i) p[i] = v;
    return CUDA_SUCCESS;
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void* stream) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (!valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
    }
    return cuMemsetD32_v2(dst, v, n);
}

// ------------------------------------------------------------------ streams and events

CUresult cuStreamCreate(void** s, unsigned flags) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!s || flags > 1) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    Stream* st = new (std::nothrow) Stream;
    if (!st) return CUDA_ERROR_OUT_OF_MEMORY;
    st->flags = flags;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_streams.insert(st);
    *s = st;
    return CUDA_SUCCESS;
}

CUresult cuStreamCreateWithPriority(void** s, unsigned flags, int) { return cuStreamCreate(s, flags); }

CUresult cuStreamDestroy_v2(void* s) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    Stream* st = static_cast<Stream*>(s);
    if (!g_streams.erase(st)) return CUDA_ERROR_INVALID_HANDLE;
    delete st;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(void* s) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    return valid_stream(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuStreamQuery(void* s) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    return cuStreamSynchronize(s);
}

CUresult cuStreamWaitEvent(void* s, void* e, unsigned) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(s) || !g_events.count(static_cast<Event*>(e))) return CUDA_ERROR_INVALID_HANDLE;
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(void* s, int* status) {
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    *status = 0;  // CU_STREAM_CAPTURE_STATUS_NONE
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(void** e, unsigned flags) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!e || flags > 0xf) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    Event* ev = new (std::nothrow) Event;
    if (!ev) return CUDA_ERROR_OUT_OF_MEMORY;
    ev->flags = flags;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_events.insert(ev);
    *e = ev;
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy_v2(void* e) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    Event* ev = static_cast<Event*>(e);
    if (!g_events.erase(ev)) return CUDA_ERROR_INVALID_HANDLE;
    delete ev;
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(void* e, void* s) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    Event* ev = static_cast<Event*>(e);
    if (!g_events.count(ev) || !valid_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    ev->recorded = true;
    ev->ms = now_ms();
    return CUDA_SUCCESS;
}

CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    return cuEventRecord(e, s);
}

CUresult cuEventQuery(void* e) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_events.count(static_cast<Event*>(e)) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventSynchronize(void* e) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    return cuEventQuery(e);
}

CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mutex);
    Event* a = static_cast<Event*>(start);
    Event* b = static_cast<Event*>(end);
    if (!g_events.count(a) || !g_events.count(b)) return CUDA_ERROR_INVALID_HANDLE;
    if ((a->flags & 2) || (b->flags & 2)) return CUDA_ERROR_INVALID_HANDLE;  // DISABLE_TIMING
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = (float)(b->ms - a->ms);
    return CUDA_SUCCESS;
}

CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return cuEventElapsedTime(ms, start, end);
}

// ------------------------------------------------------------------ modules and launches

CUresult cuModuleLoadData(void** mod, const void* image) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!mod || !image) return CUDA_ERROR_INVALID_VALUE;
    if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
    size_t size = 0;
    if (!elf_size(image, &size)) return CUDA_ERROR_INVALID_IMAGE;
    const char* tmp = std::getenv("TMPDIR");
    std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/prfl-emu-module-XXXXXX";
    std::vector<char> buf(path.begin(), path.end());
    buf.push_back(0);
    const int fd = mkstemp(buf.data());
    if (fd < 0) return CUDA_ERROR_UNKNOWN;
    path = buf.data();
    const char* p = static_cast<const char*>(image);
    size_t left = size;
    while (left > 0) {
        const ssize_t w = write(fd, p, left);
        if (w <= 0) {
            close(fd);
            unlink(path.c_str());
            return CUDA_ERROR_UNKNOWN;
        }
        p += w;
        left -= (size_t)w;
    }
    close(fd);
    // The file stays until the module is unloaded: sanitizer reports symbolise from it.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        std::fprintf(stderr, "prfl-emu cuda: cannot load a module: %s\n", dlerror());
        unlink(path.c_str());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    if (!dlsym(h, "prfl_emu_launch") || !dlsym(h, "prfl_emu_kernel_count") ||
        !dlsym(h, "prfl_emu_kernel_name")) {
        dlclose(h);
        unlink(path.c_str());
        return CUDA_ERROR_INVALID_IMAGE;
    }
    Module* m = new (std::nothrow) Module;
    if (!m) {
        dlclose(h);
        unlink(path.c_str());
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    m->handle = h;
    m->path = path;
    std::lock_guard<std::mutex> lock(g_mutex);
    g_modules.insert(m);
    *mod = m;
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(void** mod, const void* image, unsigned, void*, void**) {
    return cuModuleLoadData(mod, image);
}

CUresult cuModuleUnload(void* mod) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    Module* m = static_cast<Module*>(mod);
    if (!g_modules.erase(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (auto it = g_functions.begin(); it != g_functions.end();) {
        if ((*it)->module == m) {
            delete *it;
            it = g_functions.erase(it);
        } else {
            ++it;
        }
    }
    dlclose(m->handle);
    unlink(m->path.c_str());
    delete m;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(void** f, void* mod, const char* name) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    if (!f || !name) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mutex);
    Module* m = static_cast<Module*>(mod);
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    CountFn count = (CountFn)dlsym(m->handle, "prfl_emu_kernel_count");
    NameFn kname = (NameFn)dlsym(m->handle, "prfl_emu_kernel_name");
    const int n = count();
    for (int i = 0; i < n; ++i) {
        if (std::strcmp(kname(i), name) == 0) {
            Function* fn = new (std::nothrow) Function;
            if (!fn) return CUDA_ERROR_OUT_OF_MEMORY;
            fn->module = m;
            fn->index = i;
            fn->name = name;
            g_functions.insert(fn);
            *f = fn;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_NOT_FOUND;
}

CUresult cuFuncSetAttribute(void* f, int attrib, int value) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    std::lock_guard<std::mutex> lock(g_mutex);
    Function* fn = static_cast<Function*>(f);
    if (!g_functions.count(fn)) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
    case 8:  // MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (value < 0 || value > kOptinSmem) return CUDA_ERROR_INVALID_VALUE;
        fn->max_dyn_smem = value;
        return CUDA_SUCCESS;
    case 9:  // PREFERRED_SHARED_MEMORY_CARVEOUT
        return value >= -1 && value <= 100 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuFuncGetAttribute(int* v, int attrib, void* f) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mutex);
    Function* fn = static_cast<Function*>(f);
    if (!g_functions.count(fn)) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
    case 0: *v = kMaxThreadsPerBlock; return CUDA_SUCCESS;  // MAX_THREADS_PER_BLOCK
    case 1: *v = 0; return CUDA_SUCCESS;                    // SHARED_SIZE_BYTES (static)
    case 2: *v = 0; return CUDA_SUCCESS;                    // CONST_SIZE_BYTES
    case 3: *v = 0; return CUDA_SUCCESS;                    // LOCAL_SIZE_BYTES
    case 4: *v = 64; return CUDA_SUCCESS;                   // NUM_REGS
    case 5: *v = 90; return CUDA_SUCCESS;                   // PTX_VERSION
    case 6: *v = 90; return CUDA_SUCCESS;                   // BINARY_VERSION
    case 7: *v = 0; return CUDA_SUCCESS;                    // CACHE_MODE_CA
    case 8: *v = fn->max_dyn_smem; return CUDA_SUCCESS;     // MAX_DYNAMIC_SHARED_SIZE_BYTES
    case 9: *v = -1; return CUDA_SUCCESS;                   // PREFERRED_SHARED_MEMORY_CARVEOUT
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuFuncSetCacheConfig(void* f, int config) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_functions.count(static_cast<Function*>(f))) return CUDA_ERROR_INVALID_HANDLE;
    return config >= 0 && config <= 3 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned smem, void* stream, void** params, void** extra) {
    if (g_lost) return CUDA_ERROR_LAUNCH_FAILED;
    Function* fn = static_cast<Function*>(f);
    LaunchFn launch = nullptr;
    int max_smem = 0;
    std::string name;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (!t_current) return CUDA_ERROR_INVALID_CONTEXT;
        if (!g_functions.count(fn) || !valid_stream(stream)) return CUDA_ERROR_INVALID_HANDLE;
        launch = (LaunchFn)dlsym(fn->module->handle, "prfl_emu_launch");
        max_smem = fn->max_dyn_smem;
        name = fn->name;
    }
    // A GPU's checks, in the same terms.
    if (extra != nullptr) return CUDA_ERROR_NOT_SUPPORTED;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (bx > 1024 || by > 1024 || bz > 64 || gx > 2147483647u || gy > 65535 || gz > 65535)
        return CUDA_ERROR_INVALID_VALUE;
    if ((unsigned long long)bx * by * bz > (unsigned long long)kMaxThreadsPerBlock)
        return CUDA_ERROR_INVALID_VALUE;
    if (smem > (unsigned)max_smem) {
        std::fprintf(stderr,
                     "prfl-emu cuda: %s: %u bytes of dynamic shared memory over the function's "
                     "limit of %d (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES)\n",
                     name.c_str(), smem, max_smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!params) return CUDA_ERROR_INVALID_VALUE;
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    char err[600] = {0};
    if (trace())
        std::fprintf(stderr, "prfl-emu cuda: launch %s grid (%u,%u,%u) block (%u,%u,%u) smem %u\n",
                     name.c_str(), gx, gy, gz, bx, by, bz, smem);
    const int rc = launch(fn->index, grid, block, smem, params, err, sizeof err);
    switch (rc) {
    case 0: return CUDA_SUCCESS;
    case 1:
        std::fprintf(stderr, "prfl-emu cuda: %s: invalid launch: %s\n", name.c_str(), err);
        return CUDA_ERROR_INVALID_VALUE;
    case 3: return CUDA_ERROR_OUT_OF_MEMORY;
    default:
        std::fprintf(stderr, "prfl-emu cuda: %s grid (%u,%u,%u) block (%u,%u,%u): launch failed: %s\n",
                     name.c_str(), gx, gy, gz, bx, by, bz, err);
        return CUDA_ERROR_LAUNCH_FAILED;
    }
}


// Test hook: the device is lost from now on (see g_lost). Returns 0.
int prfl_emu_lose_device() {
    g_lost = true;
    return 0;
}

}  // extern "C"
