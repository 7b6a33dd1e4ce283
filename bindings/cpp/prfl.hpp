// prfl.hpp: header-only C++17 wrapper over the prfl C ABI (include/prfl.h).
//
// - prfl::Runtime owns a PrflRuntime* (RAII, move-only) and mirrors every C function.
// - Failures throw prfl::Error carrying the status code and prfl_last_error()'s text; the
//   producer hot path has noexcept try_submit_* variants instead, because a game thread should not
//   pay for exceptions when the queue is full (an expected, frequent outcome under load).
// - prfl::TensorView is a non-owning (pointer, float count) view built from vectors, arrays,
//   std::span or any contiguous float container, so callers never spell out `*_len` by hand.
// - prfl::set_log_callback takes a std::function and keeps it alive inside the wrapper.
//
// Engines include this next to windows.h and Unreal's headers, so it deliberately avoids names that
// those headers define as macros (ERROR, IN, OUT, check, verify, min, max, PI, ...).

#ifndef PRFL_HPP
#define PRFL_HPP

#include "prfl.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace prfl {

// ---------------------------------------------------------------------------------------------
// Enumerations. Scoped C++ enums with the C values spelled out: the static_asserts below fail the
// build if the C header ever renumbers a value, instead of silently mis-mapping it.

enum class Status : int32_t {
    Ok = 0,
    NullPointer = 1,
    InvalidArgument = 2,
    Shape = 3,
    NonFinite = 4,
    UnknownEnum = 5,
    Io = 6,
    CorruptFile = 7,
    QueueFull = 8,
    NotEnoughSamples = 9,
    NotLoaded = 10,
    Device = 11,
    DeviceLost = 12,
    Busy = 13,
    Panic = 14,
    Version = 15,
    Internal = 16,
};

enum class Device : int32_t { Cpu = 0, Cuda = 1, Auto = 2 };
enum class Backpressure : int32_t { RejectNewest = 0, DropOldest = 1 };
enum class StepMode : int32_t { Reward = 0, Prfl = 1 };
enum class RewardLoss : int32_t { Ce = 0, Bt = 1 };
enum class Solver : int32_t { UniPc = 0, Euler = 1 };

// Levels of the log callback, numbered like Rust's `log` crate (lower is more severe).
enum class LogLevel : int32_t { Off = 0, Error = 1, Warn = 2, Info = 3, Debug = 4, Trace = 5 };

static_assert(PRFL_ABI_VERSION == 1, "prfl.hpp is written for ABI version 1");
static_assert(static_cast<int32_t>(PRFL_OK) == 0 && static_cast<int32_t>(PRFL_ERR_NULL_POINTER) == 1 &&
                  static_cast<int32_t>(PRFL_ERR_INVALID_ARGUMENT) == 2 &&
                  static_cast<int32_t>(PRFL_ERR_SHAPE) == 3 &&
                  static_cast<int32_t>(PRFL_ERR_NON_FINITE) == 4 &&
                  static_cast<int32_t>(PRFL_ERR_UNKNOWN_ENUM) == 5 &&
                  static_cast<int32_t>(PRFL_ERR_IO) == 6 &&
                  static_cast<int32_t>(PRFL_ERR_CORRUPT_FILE) == 7 &&
                  static_cast<int32_t>(PRFL_ERR_QUEUE_FULL) == 8 &&
                  static_cast<int32_t>(PRFL_ERR_NOT_ENOUGH_SAMPLES) == 9 &&
                  static_cast<int32_t>(PRFL_ERR_NOT_LOADED) == 10 &&
                  static_cast<int32_t>(PRFL_ERR_DEVICE) == 11 &&
                  static_cast<int32_t>(PRFL_ERR_DEVICE_LOST) == 12 &&
                  static_cast<int32_t>(PRFL_ERR_BUSY) == 13 &&
                  static_cast<int32_t>(PRFL_ERR_PANIC) == 14 &&
                  static_cast<int32_t>(PRFL_ERR_VERSION) == 15 &&
                  static_cast<int32_t>(PRFL_ERR_INTERNAL) == 16,
              "PrflStatus values in prfl.h differ from prfl::Status");
static_assert(static_cast<int32_t>(PRFL_STEP_REWARD) == 0 && static_cast<int32_t>(PRFL_STEP_PRFL) == 1,
              "PrflStepMode values in prfl.h differ from prfl::StepMode");
static_assert(static_cast<int32_t>(PRFL_SOLVER_UNIPC) == 0 && static_cast<int32_t>(PRFL_SOLVER_EULER) == 1,
              "PrflSolver values in prfl.h differ from prfl::Solver");

// A stable English name for a status (for logs; prfl_last_error() has the specific reason).
inline const char* status_name(Status s) noexcept {
    switch (s) {
        case Status::Ok: return "ok";
        case Status::NullPointer: return "null pointer";
        case Status::InvalidArgument: return "invalid argument";
        case Status::Shape: return "shape mismatch";
        case Status::NonFinite: return "non-finite value";
        case Status::UnknownEnum: return "unknown enum value";
        case Status::Io: return "I/O error";
        case Status::CorruptFile: return "corrupt file";
        case Status::QueueFull: return "queue full";
        case Status::NotEnoughSamples: return "not enough samples";
        case Status::NotLoaded: return "model not loaded";
        case Status::Device: return "device error";
        case Status::DeviceLost: return "device lost";
        case Status::Busy: return "busy (background trainer running)";
        case Status::Panic: return "internal panic";
        case Status::Version: return "ABI version mismatch";
        case Status::Internal: return "internal error";
    }
    return "unknown status";
}

// The calling thread's last error message from the library ("" when none).
inline std::string last_error() {
    const char* m = prfl_last_error();
    return m ? std::string(m) : std::string();
}

// ---------------------------------------------------------------------------------------------
// Errors.

class Error : public std::runtime_error {
public:
    Error(Status status, const char* function, std::string detail)
        : std::runtime_error(compose(status, function, detail)),
          status_(status),
          function_(function ? function : ""),
          detail_(std::move(detail)) {}

    Status status() const noexcept { return status_; }
    // The C function that failed, e.g. "prfl_step".
    const std::string& function() const noexcept { return function_; }
    // prfl_last_error() captured at the failure (may be empty).
    const std::string& detail() const noexcept { return detail_; }

private:
    // "prfl_step: 0 pairs queued, a batch needs 2 (not enough samples)". The library's messages
    // already start with the function's name; the wrapper's own checks get it prepended.
    static std::string compose(Status s, const char* function, const std::string& detail) {
        const std::string fn = function ? function : "prfl";
        if (detail.empty()) return fn + ": " + status_name(s);
        const bool named = detail.compare(0, fn.size() + 1, fn + ":") == 0;
        return (named ? detail : fn + ": " + detail) + " (" + status_name(s) + ")";
    }

    Status status_;
    std::string function_;
    std::string detail_;
};

namespace detail {

inline Status to_status(PrflStatus s) noexcept { return static_cast<Status>(static_cast<int32_t>(s)); }

// Reads prfl_last_error() right away: it is thread-local and the next call on this thread
// overwrites it.
[[noreturn]] inline void raise(Status s, const char* function) { throw Error(s, function, last_error()); }

inline void ok_or_throw(PrflStatus s, const char* function) {
    if (to_status(s) != Status::Ok) raise(to_status(s), function);
}

template <typename C, typename = void>
struct is_float_container : std::false_type {};
template <typename C>
struct is_float_container<C, std::void_t<decltype(std::declval<const C&>().data()),
                                         decltype(std::declval<const C&>().size())>>
    : std::is_convertible<decltype(std::declval<const C&>().data()), const float*> {};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Tensor views: contiguous float32 data, row-major in the shapes the Config declares
// (latent [C,F,H,W], text [text_len,text_dim], image [image_len,image_dim]).

struct TensorView {
    const float* data = nullptr;
    size_t size = 0;  // in floats, as the C ABI's *_len arguments

    constexpr TensorView() noexcept = default;
    constexpr TensorView(const float* d, size_t n) noexcept : data(d), size(n) {}
    template <size_t N>
    constexpr TensorView(const float (&a)[N]) noexcept : data(a), size(N) {}
    // std::vector<float>, std::array<float, N>, std::span<const float>, and anything else with
    // contiguous data()/size(). Views must not outlive what they view; the library copies
    // submitted data before returning, so a temporary is fine for one call.
    template <typename C, typename = std::enable_if_t<detail::is_float_container<C>::value>>
    TensorView(const C& c) noexcept : data(c.data()), size(static_cast<size_t>(c.size())) {}

    bool empty() const noexcept { return size == 0; }
};

// ---------------------------------------------------------------------------------------------
// Plain result structs: the C structs themselves (fixed layout, documented in prfl.h).

using StepStats = PrflStepStats;
using QueueStats = PrflQueueStats;
using SampleStats = PrflSampleStats;

// How Runtime::sample_early_reject samples: a builder over PrflSampleConfig, every field 0 (the
// library's default) until set. See PrflSampleConfig in prfl.h for the defaults.
class SampleConfig {
public:
    SampleConfig() noexcept { prfl_sample_config_default(&c_); }
    // Sampling steps (2..=PRFL_MAX_SAMPLE_STEPS); 0 = the runtime's prfl_steps.
    SampleConfig& steps(uint32_t n) noexcept {
        c_.steps = n;
        return *this;
    }
    // Grid shift; 0 = the runtime's shift.
    SampleConfig& shift(float s) noexcept {
        c_.shift = s;
        return *this;
    }
    SampleConfig& solver(Solver s) noexcept {
        c_.solver = static_cast<int32_t>(s);
        return *this;
    }
    // Solver steps before the candidates are scored (1..steps-1); 0 = 2 * steps / 5.
    SampleConfig& reject_at_step(uint32_t s) noexcept {
        c_.reject_at_step = s;
        return *this;
    }
    // Candidates finished (1..count; count = no rejection); 0 = count / 4 (at least 1).
    SampleConfig& keep(uint32_t k) noexcept {
        c_.keep = k;
        return *this;
    }
    const PrflSampleConfig& c_config() const noexcept { return c_; }

private:
    PrflSampleConfig c_{};
};

// What Runtime::sample_early_reject returns: the survivors in candidate order.
struct SampleResult {
    std::vector<float> latents;   // kept.size() clean latents, back to back
    std::vector<uint32_t> kept;   // their candidate indices, ascending
    SampleStats stats{};
};

// ---------------------------------------------------------------------------------------------
// Config: a builder over PrflConfig starting from the library's defaults.

class Config {
public:
    Config() noexcept {
        prfl_config_default(&c_);
        // Declare the layout this wrapper was compiled against; the library checks both.
        c_.struct_size = static_cast<uint32_t>(sizeof(PrflConfig));
        c_.abi_version = PRFL_ABI_VERSION;
    }

    Config& device(Device d, int32_t index = 0) {
        c_.device = static_cast<int32_t>(d);
        c_.device_index = index;
        return *this;
    }
    // Directory holding the CUDA libraries to load at runtime; empty: the system's search path.
    Config& cuda_library_dir(std::string dir) {
        cuda_dir_ = std::move(dir);
        return *this;
    }
    Config& queue(uint32_t capacity, Backpressure policy = Backpressure::RejectNewest) {
        c_.queue_capacity = capacity;
        c_.backpressure = static_cast<int32_t>(policy);
        return *this;
    }
    Config& latent_shape(uint32_t channels, uint32_t frames, uint32_t height, uint32_t width) {
        c_.latent_channels = channels;
        c_.latent_frames = frames;
        c_.latent_height = height;
        c_.latent_width = width;
        return *this;
    }
    Config& text_shape(uint32_t tokens, uint32_t dim) {
        c_.text_len = tokens;
        c_.text_dim = dim;
        return *this;
    }
    // I2V only (CLIP image features); leave at 0 x 0 for T2V.
    Config& image_shape(uint32_t tokens, uint32_t dim) {
        c_.image_len = tokens;
        c_.image_dim = dim;
        return *this;
    }
    Config& batch_size(uint32_t n) {
        c_.batch_size = n;
        return *this;
    }
    Config& reward_loss(RewardLoss loss) {
        c_.reward_loss = static_cast<int32_t>(loss);
        return *this;
    }
    Config& reward_blocks(uint32_t n) {
        c_.reward_blocks = n;
        return *this;
    }
    Config& reward_lr(float backbone, float head) {
        c_.reward_backbone_lr = backbone;
        c_.reward_head_lr = head;
        return *this;
    }
    Config& prfl_lr(float lr) {
        c_.prfl_lr = lr;
        return *this;
    }
    Config& prfl_steps(uint32_t n) {
        c_.prfl_steps = n;
        return *this;
    }
    Config& shift(float s) {
        c_.shift = s;
        return *this;
    }
    Config& lora(uint32_t rank, float alpha) {
        c_.lora_rank = rank;
        c_.lora_alpha = alpha;
        return *this;
    }
    Config& recompute(bool on) {
        c_.recompute = on ? 1u : 0u;
        return *this;
    }
    Config& seed(uint64_t s) {
        c_.seed = s;
        return *this;
    }
    // Run on the CPU (with a logged warning) when the CUDA device cannot be used.
    Config& cpu_fallback(bool on) {
        c_.cpu_fallback = on ? 1 : 0;
        return *this;
    }

    // Float counts of one sample's tensors under this configuration.
    size_t latent_len() const noexcept {
        return size_t{c_.latent_channels} * c_.latent_frames * c_.latent_height * c_.latent_width;
    }
    size_t text_len() const noexcept { return size_t{c_.text_len} * c_.text_dim; }
    size_t image_len() const noexcept { return size_t{c_.image_len} * c_.image_dim; }

    // The C struct to pass to prfl_create. Its string pointer borrows from this Config, which is
    // why the string is patched in here rather than stored (copies would dangle otherwise).
    PrflConfig c_config() const noexcept {
        PrflConfig c = c_;
        c.cuda_library_dir = cuda_dir_.empty() ? nullptr : cuda_dir_.c_str();
        return c;
    }
    // Direct access for fields without a builder method.
    PrflConfig& raw() noexcept { return c_; }
    const PrflConfig& raw() const noexcept { return c_; }

private:
    PrflConfig c_{};
    std::string cuda_dir_;
};

// ---------------------------------------------------------------------------------------------
// Library information and logging.

inline uint32_t abi_version() noexcept { return prfl_abi_version(); }
inline std::string version() {
    const char* v = prfl_version();
    return v ? std::string(v) : std::string();
}

using LogFunction = std::function<void(LogLevel level, const char* message)>;

namespace detail {

// The callback lives in a process-wide slot because the C side has one process-wide callback.
// Log calls may arrive on any thread (producers, the background trainer) while the host swaps the
// callback, so a call copies the shared_ptr under the mutex and runs it outside: a replaced
// callback stays alive until its last in-flight call returns.
struct LogSlot {
    std::mutex mutex;
    std::shared_ptr<const LogFunction> fn;
};

inline LogSlot& log_slot() {
    static LogSlot slot;  // function-local static: one per program (or DSO), initialised once
    return slot;
}

// C linkage because the library calls it through a C function pointer; the prefixed name keeps
// the unmangled symbol from colliding with anything else in the host.
extern "C" inline void prfl_hpp_log_trampoline(void* /*user*/, int32_t level, const char* message) {
    std::shared_ptr<const LogFunction> fn;
    {
        std::lock_guard<std::mutex> lock(log_slot().mutex);
        fn = log_slot().fn;
    }
    if (!fn) return;
    // An exception must not unwind into the library's (Rust) frames: that is undefined behaviour.
    try {
        (*fn)(static_cast<LogLevel>(level), message ? message : "");
    } catch (...) {
    }
}

}  // namespace detail

// Routes the library's log messages up to max_level to fn (from any thread); an empty fn
// unregisters. Throws prfl::Error if the library refuses.
inline void set_log_callback(LogFunction fn, LogLevel max_level = LogLevel::Info) {
    auto& slot = detail::log_slot();
    if (!fn) {
        detail::ok_or_throw(prfl_set_log_callback(nullptr, nullptr, static_cast<int32_t>(LogLevel::Off)),
                            "prfl_set_log_callback");
        std::lock_guard<std::mutex> lock(slot.mutex);
        slot.fn.reset();
        return;
    }
    {
        std::lock_guard<std::mutex> lock(slot.mutex);
        slot.fn = std::make_shared<const LogFunction>(std::move(fn));
    }
    detail::ok_or_throw(prfl_set_log_callback(&detail::prfl_hpp_log_trampoline, nullptr, static_cast<int32_t>(max_level)),
                        "prfl_set_log_callback");
}

inline void clear_log_callback() { set_log_callback(LogFunction{}); }

// ---------------------------------------------------------------------------------------------
// Runtime.

class Runtime {
public:
    // Creates a runtime (prfl_create). Throws prfl::Error; Status::Version when the loaded
    // library speaks another ABI than the header this was compiled with.
    explicit Runtime(const Config& config) {
        if (prfl_abi_version() != PRFL_ABI_VERSION) {
            throw Error(Status::Version, "prfl_abi_version",
                        "library ABI " + std::to_string(prfl_abi_version()) + ", header ABI " +
                            std::to_string(PRFL_ABI_VERSION));
        }
        const PrflConfig c = config.c_config();
        PrflRuntime* rt = nullptr;
        detail::ok_or_throw(prfl_create(&c, &rt), "prfl_create");
        rt_ = rt;
    }
    // An empty runtime (no PrflRuntime yet): for members that are opened later.
    Runtime() noexcept = default;
    // Adopts a runtime created through the C API (takes ownership).
    explicit Runtime(PrflRuntime* adopt) noexcept : rt_(adopt) {}

    ~Runtime() { reset(); }
    Runtime(Runtime&& o) noexcept : rt_(std::exchange(o.rt_, nullptr)) {}
    Runtime& operator=(Runtime&& o) noexcept {
        if (this != &o) {
            reset();
            rt_ = std::exchange(o.rt_, nullptr);
        }
        return *this;
    }
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    PrflRuntime* get() const noexcept { return rt_; }
    explicit operator bool() const noexcept { return rt_ != nullptr; }
    // Gives up ownership without destroying.
    PrflRuntime* release() noexcept { return std::exchange(rt_, nullptr); }
    // Destroys the runtime now (stops the background trainer first, inside prfl_destroy).
    void reset() noexcept {
        if (rt_) prfl_destroy(std::exchange(rt_, nullptr));
    }

    // --- models -----------------------------------------------------------------------------

    void load_generator(const std::string& path) {
        detail::ok_or_throw(prfl_load_generator(rt_, path.c_str()), "prfl_load_generator");
    }
    // A safetensors file already in memory plus its config.json text (e.g. from a pak file).
    void load_generator_from_memory(const uint8_t* safetensors, size_t len, const std::string& config_json) {
        detail::ok_or_throw(prfl_load_generator_from_memory(rt_, safetensors, len, config_json.c_str()),
                            "prfl_load_generator_from_memory");
    }
    void load_generator_from_memory(const std::vector<uint8_t>& safetensors, const std::string& config_json) {
        load_generator_from_memory(safetensors.data(), safetensors.size(), config_json);
    }
    // Without a config.json: the configuration is inferred from the tensor shapes (head width
    // 128, as in every released Wan2.1).
    void load_generator_from_memory(const uint8_t* safetensors, size_t len) {
        detail::ok_or_throw(prfl_load_generator_from_memory(rt_, safetensors, len, nullptr),
                            "prfl_load_generator_from_memory");
    }
    void init_reward() { detail::ok_or_throw(prfl_init_reward(rt_), "prfl_init_reward"); }
    void load_reward(const std::string& path) {
        detail::ok_or_throw(prfl_load_reward(rt_, path.c_str()), "prfl_load_reward");
    }

    // --- producers (thread-safe, never block) ----------------------------------------------

    // A clip rated by a person: label 1 = good, 0 = bad (the only two values the library takes;
    // anything else is Status::InvalidArgument). Used by RewardLoss::Ce; pairs feed RewardLoss::Bt.
    // `image` is empty for T2V models.
    void submit_labeled(TensorView latent, TensorView text, TensorView image, float label) {
        detail::ok_or_throw(try_submit_status_labeled(latent, text, image, label), "prfl_submit_labeled");
    }
    void submit_labeled(TensorView latent, TensorView text, float label) {
        submit_labeled(latent, text, TensorView{}, label);
    }
    // Two clips of the same prompt where a person preferred `win`.
    void submit_pair(TensorView win, TensorView lose, TensorView text, TensorView image = {}) {
        if (win.size != lose.size) {
            throw Error(Status::Shape, "prfl_submit_pair",
                        "win has " + std::to_string(win.size) + " floats, lose " + std::to_string(lose.size));
        }
        detail::ok_or_throw(try_submit_status_pair(win, lose, text, image), "prfl_submit_pair");
    }

    // Hot-path variants: true when the sample was queued. On false, *why (when given) says why:
    // Status::QueueFull is the expected, transient case under Backpressure::RejectNewest; anything
    // else is a caller bug (prfl::last_error() on this thread has the details, except for a
    // win/lose size mismatch, which the wrapper rejects before calling the library).
    bool try_submit_labeled(TensorView latent, TensorView text, TensorView image, float label,
                            Status* why = nullptr) noexcept {
        return accepted(try_submit_status_labeled(latent, text, image, label), why);
    }
    bool try_submit_labeled(TensorView latent, TensorView text, float label, Status* why = nullptr) noexcept {
        return try_submit_labeled(latent, text, TensorView{}, label, why);
    }
    bool try_submit_pair(TensorView win, TensorView lose, TensorView text, TensorView image = {},
                         Status* why = nullptr) noexcept {
        return accepted(try_submit_status_pair(win, lose, text, image), why);
    }

    // --- training (control thread) ---------------------------------------------------------

    // One optimiser step. Throws with Status::NotEnoughSamples when fewer than batch_size samples
    // are queued, Status::Busy while the background trainer runs; see try_step to poll instead.
    StepStats step(StepMode mode) {
        StepStats s = empty_step_stats();
        detail::ok_or_throw(prfl_step(rt_, static_cast<int32_t>(mode), &s), "prfl_step");
        return s;
    }
    // Like step, but NotEnoughSamples and Busy (the "try again later" outcomes) return false
    // instead of throwing; other failures still throw.
    bool try_step(StepMode mode, StepStats& out) {
        out = empty_step_stats();
        const PrflStatus s = prfl_step(rt_, static_cast<int32_t>(mode), &out);
        const Status st = detail::to_status(s);
        if (st == Status::NotEnoughSamples || st == Status::Busy) return false;
        detail::ok_or_throw(s, "prfl_step");
        return true;
    }
    // Background trainer: steps whenever enough samples are queued, until stop().
    void start(StepMode mode) { detail::ok_or_throw(prfl_start(rt_, static_cast<int32_t>(mode)), "prfl_start"); }
    void stop() { detail::ok_or_throw(prfl_stop(rt_), "prfl_stop"); }

    // --- scoring ---------------------------------------------------------------------------

    // Reward of one latent at a noise timestep in [0, 1000] (0 = clean): the probability in
    // (0, 1) that it is to the raters' taste. Waits while a training step holds the model.
    float score(TensorView latent, float timestep, TensorView text) {
        float out = 0.0f;
        detail::ok_or_throw(prfl_score(rt_, latent.data, latent.size, timestep, text.data, text.size, &out),
                            "prfl_score");
        return out;
    }
    // `count` latents stored back to back, each with its own timestep and its own text states:
    // latents.size == count * latent_len, text.size == count * text_len (repeat the text for
    // candidates of one prompt).
    std::vector<float> score_batch(TensorView latents, size_t count, TensorView timesteps, TensorView text) {
        std::vector<float> out(count);
        score_batch(latents, count, timesteps, text, out.data());
        return out;
    }
    void score_batch(TensorView latents, size_t count, TensorView timesteps, TensorView text, float* out) {
        if (timesteps.size != count) {
            throw Error(Status::Shape, "prfl_score_batch",
                        "timesteps has " + std::to_string(timesteps.size) + " values for " +
                            std::to_string(count) + " latents");
        }
        if (count == 0) return;
        // The C call takes per-sample lengths; the views carry totals.
        const auto per_sample = [count](TensorView view, const char* what) {
            if (view.size % count != 0) {
                throw Error(Status::Shape, "prfl_score_batch",
                            std::string(what) + " has " + std::to_string(view.size) + " floats, not a multiple of " +
                                std::to_string(count) + " samples");
            }
            return view.size / count;
        };
        const size_t latent_len = per_sample(latents, "latents");
        const size_t text_len = per_sample(text, "text");
        detail::ok_or_throw(prfl_score_batch(rt_, latents.data, count, latent_len, timesteps.data, text.data,
                                             text_len, out),
                            "prfl_score_batch");
    }

    // --- early rejection ---------------------------------------------------------------------

    // For a host running its own sampler: scores `count` candidates (latents and one text each,
    // back to back) at the sampler's current timestep and returns the indices of the best
    // `keep`, best first (ties: the lower index first). `scores`, when given, receives all
    // `count` scores in candidate order.
    std::vector<uint32_t> select_candidates(TensorView latents, size_t count, float timestep, TensorView text,
                                            size_t keep, std::vector<float>* scores = nullptr) {
        if (count == 0 || latents.size % count != 0 || text.size % count != 0) {
            throw Error(Status::Shape, "prfl_select_candidates",
                        std::to_string(latents.size) + " latent and " + std::to_string(text.size) +
                            " text floats do not split into " + std::to_string(count) + " candidates");
        }
        std::vector<uint32_t> kept(keep);
        if (scores) scores->assign(count, 0.0f);
        detail::ok_or_throw(prfl_select_candidates(rt_, latents.data, count, latents.size / count, timestep,
                                                   text.data, text.size / count, keep, kept.data(),
                                                   scores ? scores->data() : nullptr),
                            "prfl_select_candidates");
        return kept;
    }

    // Lets the library sample `count` candidates from `noise` (standard normal, back to back)
    // under one text each, score them part-way with the reward model and finish only the best
    // config.keep (all of them when keep == count: plain sampling).
    SampleResult sample_early_reject(TensorView noise, size_t count, TensorView text,
                                     const SampleConfig& config = SampleConfig()) {
        if (count == 0 || noise.size % count != 0 || text.size % count != 0) {
            throw Error(Status::Shape, "prfl_sample_early_reject",
                        std::to_string(noise.size) + " noise and " + std::to_string(text.size) +
                            " text floats do not split into " + std::to_string(count) + " candidates");
        }
        const size_t latent_len = noise.size / count;
        const uint32_t k = config.c_config().keep;
        const size_t keep = k != 0 ? k : (count / 4 > 0 ? count / 4 : 1);
        if (keep > count) {
            throw Error(Status::InvalidArgument, "prfl_sample_early_reject",
                        "config keep is " + std::to_string(keep) + ": between 1 and count (" +
                            std::to_string(count) + ")");
        }
        SampleResult r;
        r.latents.resize(keep * latent_len);
        r.kept.resize(keep);
        r.stats.struct_size = static_cast<uint32_t>(sizeof(SampleStats));
        detail::ok_or_throw(prfl_sample_early_reject(rt_, noise.data, count, latent_len, text.data, text.size / count,
                                                     &config.c_config(), r.latents.data(), r.kept.data(), &r.stats),
                            "prfl_sample_early_reject");
        return r;
    }

    // --- persistence and monitoring --------------------------------------------------------

    void save(const std::string& path) { detail::ok_or_throw(prfl_save(rt_, path.c_str()), "prfl_save"); }
    void load(const std::string& path) { detail::ok_or_throw(prfl_load(rt_, path.c_str()), "prfl_load"); }

    QueueStats queue_stats() const {
        QueueStats s{};
        s.struct_size = static_cast<uint32_t>(sizeof(QueueStats));
        detail::ok_or_throw(prfl_queue_stats(rt_, &s), "prfl_queue_stats");
        return s;
    }

private:
    static StepStats empty_step_stats() noexcept {
        StepStats s{};
        s.struct_size = static_cast<uint32_t>(sizeof(StepStats));
        return s;
    }
    static bool accepted(PrflStatus s, Status* why) noexcept {
        const Status st = detail::to_status(s);
        if (why) *why = st;
        return st == Status::Ok;
    }
    PrflStatus try_submit_status_labeled(TensorView latent, TensorView text, TensorView image,
                                         float label) noexcept {
        return prfl_submit_labeled(rt_, latent.data, latent.size, text.data, text.size, image.data, image.size,
                                   label);
    }
    PrflStatus try_submit_status_pair(TensorView win, TensorView lose, TensorView text,
                                      TensorView image) noexcept {
        // The C call takes one length for both latents: never let it read past a shorter `lose`.
        if (win.size != lose.size) return static_cast<PrflStatus>(PRFL_ERR_SHAPE);
        return prfl_submit_pair(rt_, win.data, lose.data, win.size, text.data, text.size, image.data,
                                image.size);
    }

    PrflRuntime* rt_ = nullptr;
};

}  // namespace prfl

#endif  // PRFL_HPP
