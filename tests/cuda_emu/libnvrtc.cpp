// Stand-in NVRTC for the emulated CUDA device: "compiles" a kernel source by building it with the
// host C++ compiler into a shared object (the emulation header cuda_cpu.h force-included), and
// hands that object's bytes out as the CUBIN, which the stand-in driver (libcuda.cpp) dlopens.
//
// Build (tests/common/cuda_emu.rs does this):
//   g++ -std=c++17 -O2 -fPIC -shared -Wl,-soname,libnvrtc.so
//       -DPRFL_EMU_HEADER='"/abs/cuda_cpu.h"' -DPRFL_EMU_FLAGS='"<sanitizer flags>"'
//       libnvrtc.cpp -o libnvrtc.so
// Environment (read at each compile):
//   PRFL_EMU_CXX       the compiler (default g++)
//   PRFL_EMU_HEADER    overrides the header path compiled in
//   PRFL_EMU_FLAGS     overrides the variant's extra flags compiled in (e.g. -fsanitize=thread)
//   PRFL_EMU_MUTATE    "<stem>::<find>::<replace>[;...]": literal substitutions applied to the
//                      source named <stem>.cu before compiling (mutation tests); in find and
//                      replace, \; is a semicolon, \n a newline, \\ a backslash. Each <find>
//                      must occur exactly once in that source, otherwise the compile fails, so a
//                      mutant can never silently be the unmodified source.
//   PRFL_EMU_KEEP      keep the temporary build folder (debugging)
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <new>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

#ifndef PRFL_EMU_HEADER
#error "build with -DPRFL_EMU_HEADER='\"/abs/path/cuda_cpu.h\"'"
#endif
#ifndef PRFL_EMU_FLAGS
#define PRFL_EMU_FLAGS ""
#endif

typedef int nvrtcResult;
enum {
    NVRTC_SUCCESS = 0,
    NVRTC_ERROR_OUT_OF_MEMORY = 1,
    NVRTC_ERROR_PROGRAM_CREATION_FAILURE = 2,
    NVRTC_ERROR_INVALID_INPUT = 3,
    NVRTC_ERROR_INVALID_PROGRAM = 4,
    NVRTC_ERROR_INVALID_OPTION = 5,
    NVRTC_ERROR_COMPILATION = 6,
    NVRTC_ERROR_INTERNAL_ERROR = 11,
};

namespace {

// The version this stand-in reports (prfl requires NVRTC 13; the kernel cache keys on it).
constexpr int kMajor = 13, kMinor = 0;
// The real architectures a CUDA 13 NVRTC compiles for.
constexpr int kArchs[] = {75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121};

struct Program {
    std::string source;
    std::string name;
    std::string log;
    std::vector<char> image;  // the shared object
    bool compiled = false;
};

// Live programs, so that a stale or foreign handle is an error rather than a crash.
std::mutex g_mutex;
std::set<Program*> g_programs;

Program* lookup(void* handle) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_programs.find(static_cast<Program*>(handle));
    return it == g_programs.end() ? nullptr : *it;
}

std::string env_or(const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return v && *v ? std::string(v) : std::string(fallback);
}

bool read_file(const std::string& path, std::string& out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return true;
}

bool write_file(const std::string& path, const std::string& data) {
    std::ofstream f(path, std::ios::binary);
    f.write(data.data(), (std::streamsize)data.size());
    return (bool)f;
}

// Runs argv[0] (searched in PATH) with stdout and stderr captured in `out_path` and appended to
// `log`; the exit status (-1 when it did not run or did not exit). No shell, and the environment
// without LD_PRELOAD: a sanitizer runtime preloaded into the test process must not be preloaded
// into the compiler (a shell started under the TSan runtime crashes).
int run(const std::vector<std::string>& argv, const std::string& out_path, std::string& log) {
    std::string shown = "$";
    for (const auto& a : argv) shown += " " + a;
    log += shown + "\n";
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "LD_PRELOAD=", 11) != 0) env.push_back(*e);
    std::vector<char*> envp, args;
    for (auto& e : env) envp.push_back(&e[0]);
    envp.push_back(nullptr);
    std::vector<std::string> argv_copy = argv;
    for (auto& a : argv_copy) args.push_back(&a[0]);
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        log += "cannot start " + argv[0] + ": " + std::strerror(rc) + "\n";
        return -1;
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            log += "waitpid failed: " + std::string(std::strerror(errno)) + "\n";
            return -1;
        }
    }
    std::string out;
    if (read_file(out_path, out)) log += out;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Splits a flag string at white space (the flags contain no quoted spaces).
std::vector<std::string> words(const std::string& s) {
    std::vector<std::string> w;
    std::istringstream in(s);
    std::string t;
    while (in >> t) w.push_back(t);
    return w;
}

size_t count_of(const std::string& hay, const std::string& needle) {
    if (needle.empty()) return 0;
    size_t n = 0;
    for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
    return n;
}

// PRFL_EMU_MUTATE's items: split at unescaped ';', each "<stem>::<find>::<replace>" with the
// escapes \; (a semicolon), \n (a newline) and \\ (a backslash) decoded in find and replace.
// Kernel code is full of semicolons, hence the escape. false on a malformed item.
bool parse_mutations(const std::string& spec, std::vector<std::string>& stems,
                     std::vector<std::string>& finds, std::vector<std::string>& repls,
                     std::string& log) {
    std::vector<std::string> items(1);
    for (size_t i = 0; i < spec.size(); ++i) {
        const char c = spec[i];
        if (c == '\\' && i + 1 < spec.size()) {
            items.back() += c;
            items.back() += spec[++i];
        } else if (c == ';') {
            items.emplace_back();
        } else {
            items.back() += c;
        }
    }
    auto unescape = [](const std::string& t) {
        std::string o;
        for (size_t i = 0; i < t.size(); ++i) {
            if (t[i] == '\\' && i + 1 < t.size()) {
                const char n = t[++i];
                o += n == 'n' ? '\n' : n;
            } else {
                o += t[i];
            }
        }
        return o;
    };
    for (const auto& item : items) {
        if (item.empty()) continue;
        const size_t a = item.find("::");
        const size_t b = a == std::string::npos ? a : item.find("::", a + 2);
        if (b == std::string::npos || a == 0) {
            log += "PRFL_EMU_MUTATE: malformed item '" + item +
                   "' (expected <stem>::<find>::<replace>)\n";
            return false;
        }
        stems.push_back(item.substr(0, a));
        finds.push_back(unescape(item.substr(a + 2, b - a - 2)));
        repls.push_back(unescape(item.substr(b + 2)));
    }
    return true;
}

// Applies PRFL_EMU_MUTATE's substitutions that name this source; false (with the reason in the
// log) when one is malformed or its text does not occur exactly once.
bool apply_mutations(const std::string& stem, std::string& src, std::string& log) {
    const char* spec = std::getenv("PRFL_EMU_MUTATE");
    if (!spec || !*spec) return true;
    std::vector<std::string> stems, finds, repls;
    if (!parse_mutations(spec, stems, finds, repls, log)) return false;
    for (size_t i = 0; i < stems.size(); ++i) {
        if (stems[i] != stem) continue;
        const size_t n = count_of(src, finds[i]);
        if (n != 1) {
            log += "PRFL_EMU_MUTATE: '" + finds[i] + "' occurs " + std::to_string(n) +
                   " times in " + stem + ".cu (it must occur exactly once)\n";
            std::fprintf(stderr, "prfl-emu nvrtc: mutant of %s.cu rejected: the text occurs %zu times\n",
                         stem.c_str(), n);
            return false;
        }
        src.replace(src.find(finds[i]), finds[i].size(), repls[i]);
        log += "PRFL_EMU_MUTATE: applied '" + finds[i] + "' -> '" + repls[i] + "' to " + stem +
               ".cu\n";
        std::fprintf(stderr, "prfl-emu nvrtc: mutant of %s.cu applied\n", stem.c_str());
    }
    return true;
}

// The names of the source's kernels: preprocess with __global__ as a marker and collect the
// identifier of every `MARK void name (`.
bool kernel_names(const std::string& cxx, const std::string& header, const std::string& src_path,
                  const std::string& out_path, const std::string& log_path,
                  std::vector<std::string>& names, std::string& log) {
    const std::vector<std::string> cmd = {
        cxx,      "-E",   "-P",  "-std=c++17", "-DPRFL_CUDA_CPU_EMU", "-DPRFL_EMU_SCAN",
        "-include", header, "-x", "c++",        src_path,              "-o",
        out_path};
    if (run(cmd, log_path, log) != 0) return false;
    std::string text;
    if (!read_file(out_path, text)) {
        log += "cannot read the preprocessed source\n";
        return false;
    }
    static const std::regex re(R"(PRFL_EMU_GLOBAL_MARK\s+void\s+([A-Za-z_][A-Za-z0-9_]*)\s*\()");
    std::set<std::string> seen;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator();
         ++it) {
        const std::string n = (*it)[1].str();
        if (seen.insert(n).second) names.push_back(n);
    }
    return true;
}

// Stem of a program name: "attention.cu" -> "attention".
std::string stem_of(const std::string& name) {
    std::string s = name;
    const size_t slash = s.find_last_of('/');
    if (slash != std::string::npos) s = s.substr(slash + 1);
    const size_t dot = s.rfind('.');
    return dot == std::string::npos ? s : s.substr(0, dot);
}

nvrtcResult compile(Program& p) {
    p.log.clear();
    const std::string cxx = env_or("PRFL_EMU_CXX", "g++");
    const std::string header = env_or("PRFL_EMU_HEADER", PRFL_EMU_HEADER);
    const std::string flags = env_or("PRFL_EMU_FLAGS", PRFL_EMU_FLAGS);
    const std::string stem = stem_of(p.name);
    std::string src = p.source;
    if (!apply_mutations(stem, src, p.log)) return NVRTC_ERROR_COMPILATION;

    const char* tmp_env = std::getenv("TMPDIR");
    const std::string dir_tmpl =
        std::string(tmp_env && *tmp_env ? tmp_env : "/tmp") + "/prfl-emu-nvrtc-XXXXXX";
    std::vector<char> dbuf(dir_tmpl.begin(), dir_tmpl.end());
    dbuf.push_back(0);
    if (!mkdtemp(dbuf.data())) {
        p.log += "mkdtemp failed: " + std::string(std::strerror(errno)) + "\n";
        return NVRTC_ERROR_INTERNAL_ERROR;
    }
    const std::string dir(dbuf.data());
    const std::string src_path = dir + "/" + stem + ".cu";
    const std::string pre_path = dir + "/" + stem + ".ii";
    const std::string so_path = dir + "/" + stem + ".so";
    const std::string log_path = dir + "/compiler.log";
    nvrtcResult rc = NVRTC_ERROR_COMPILATION;
    std::vector<std::string> names;
    do {
        if (!write_file(src_path, src)) {
            p.log += "cannot write " + src_path + "\n";
            rc = NVRTC_ERROR_INTERNAL_ERROR;
            break;
        }
        if (!kernel_names(cxx, header, src_path, pre_path, log_path, names, p.log)) break;
        if (names.empty()) {
            p.log += "no __global__ function found in " + p.name + "\n";
            break;
        }
        std::string reg = src + "\n// Registrations appended by the stand-in NVRTC.\n";
        for (const auto& n : names) reg += "PRFL_EMU_KERNEL(" + n + ")\n";
        if (!write_file(src_path, reg)) {
            rc = NVRTC_ERROR_INTERNAL_ERROR;
            break;
        }
        std::vector<std::string> cmd = {cxx,     "-shared", "-fPIC", "-std=c++17", "-O1", "-g",
                                        "-ffp-contract=off", "-fno-fast-math",
                                        "-Wno-unknown-pragmas", "-DPRFL_CUDA_CPU_EMU",
                                        "-include", header};
        for (const auto& f : words(flags)) cmd.push_back(f);
        for (const char* a : {"-x", "c++"}) cmd.push_back(a);
        cmd.push_back(src_path);
        cmd.push_back("-o");
        cmd.push_back(so_path);
        if (run(cmd, log_path, p.log) != 0) break;
        std::string image;
        if (!read_file(so_path, image) || image.empty()) {
            p.log += "the compiler wrote no shared object\n";
            break;
        }
        p.image.assign(image.begin(), image.end());
        p.compiled = true;
        rc = NVRTC_SUCCESS;
    } while (false);
    if (!std::getenv("PRFL_EMU_KEEP")) {
        unlink(src_path.c_str());
        unlink(pre_path.c_str());
        unlink(so_path.c_str());
        unlink(log_path.c_str());
        rmdir(dir.c_str());
    } else {
        p.log += "kept " + dir + "\n";
    }
    return rc;
}

nvrtcResult copy_size(void* prog, size_t* size, bool log) {
    Program* p = lookup(prog);
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    if (!size) return NVRTC_ERROR_INVALID_INPUT;
    if (log) {
        *size = p->log.size() + 1;
    } else {
        if (!p->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
        *size = p->image.size();
    }
    return NVRTC_SUCCESS;
}

nvrtcResult copy_out(void* prog, char* out, bool log) {
    Program* p = lookup(prog);
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    if (!out) return NVRTC_ERROR_INVALID_INPUT;
    if (log) {
        std::memcpy(out, p->log.c_str(), p->log.size() + 1);
    } else {
        if (!p->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
        std::memcpy(out, p->image.data(), p->image.size());
    }
    return NVRTC_SUCCESS;
}

}  // namespace

extern "C" {

const char* nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_OUT_OF_MEMORY: return "NVRTC_ERROR_OUT_OF_MEMORY";
    case NVRTC_ERROR_PROGRAM_CREATION_FAILURE: return "NVRTC_ERROR_PROGRAM_CREATION_FAILURE";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_ERROR_INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
    case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
    case NVRTC_ERROR_INTERNAL_ERROR: return "NVRTC_ERROR_INTERNAL_ERROR";
    default: return "NVRTC_ERROR unknown";
    }
}

nvrtcResult nvrtcVersion(int* major, int* minor) {
    if (!major || !minor) return NVRTC_ERROR_INVALID_INPUT;
    *major = kMajor;
    *minor = kMinor;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetNumSupportedArchs(int* n) {
    if (!n) return NVRTC_ERROR_INVALID_INPUT;
    *n = (int)(sizeof kArchs / sizeof kArchs[0]);
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetSupportedArchs(int* archs) {
    if (!archs) return NVRTC_ERROR_INVALID_INPUT;
    std::memcpy(archs, kArchs, sizeof kArchs);
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCreateProgram(void** prog, const char* src, const char* name, int num_headers,
                               const char* const* headers, const char* const* include_names) {
    (void)headers;
    (void)include_names;
    if (!prog || !src) return NVRTC_ERROR_INVALID_INPUT;
    if (num_headers != 0) return NVRTC_ERROR_INVALID_INPUT;  // prfl's sources include nothing
    Program* p = new (std::nothrow) Program;
    if (!p) return NVRTC_ERROR_OUT_OF_MEMORY;
    p->source = src;
    p->name = name && *name ? name : "default_program.cu";
    std::lock_guard<std::mutex> lock(g_mutex);
    g_programs.insert(p);
    *prog = p;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(void** prog) {
    if (!prog) return NVRTC_ERROR_INVALID_INPUT;
    Program* p = static_cast<Program*>(*prog);
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (g_programs.erase(p) == 0) return NVRTC_ERROR_INVALID_PROGRAM;
    }
    delete p;
    *prog = nullptr;
    return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCompileProgram(void* prog, int num_options, const char* const* options) {
    Program* p = lookup(prog);
    if (!p) return NVRTC_ERROR_INVALID_PROGRAM;
    if (num_options < 0 || (num_options > 0 && !options)) return NVRTC_ERROR_INVALID_INPUT;
    // The options are NVRTC's (architecture, standard, line info): checked for form only, since
    // the host compiler gets its own fixed set.
    for (int i = 0; i < num_options; ++i) {
        if (!options[i]) return NVRTC_ERROR_INVALID_INPUT;
        if (options[i][0] != '-') {
            p->log = std::string("unknown option ") + options[i] + "\n";
            return NVRTC_ERROR_INVALID_OPTION;
        }
    }
    try {
        return compile(*p);
    } catch (...) {
        p->log += "internal error in the stand-in NVRTC\n";
        return NVRTC_ERROR_INTERNAL_ERROR;
    }
}

nvrtcResult nvrtcGetProgramLogSize(void* prog, size_t* size) { return copy_size(prog, size, true); }
nvrtcResult nvrtcGetProgramLog(void* prog, char* log) { return copy_out(prog, log, true); }
nvrtcResult nvrtcGetCUBINSize(void* prog, size_t* size) { return copy_size(prog, size, false); }
nvrtcResult nvrtcGetCUBIN(void* prog, char* out) { return copy_out(prog, out, false); }
// The emulated device has no PTX: the "PTX" is the same shared object.
nvrtcResult nvrtcGetPTXSize(void* prog, size_t* size) { return copy_size(prog, size, false); }
nvrtcResult nvrtcGetPTX(void* prog, char* out) { return copy_out(prog, out, false); }

}  // extern "C"
