// PrflCore: everything UPrflPreferenceComponent does that does not need the engine, in plain
// C++17 over prfl.hpp, so CI can build and test it with g++ (samples/unreal/tests/) without
// Unreal. The component only converts between Unreal types and these calls.
//
// Threading: Submit* may be called from any thread at any time (they never throw and only wait
// while Open/Close run); the other methods are meant for one control thread (the game thread)
// and are serialised internally anyway.
#pragma once

#include "prfl.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>

struct FPrflCoreSettings
{
    // Wan2.1 checkpoint directory or safetensors file.
    std::string GeneratorPath;
    // Runtime state (prfl_save) to resume from when it exists, and where Save() writes.
    std::string StatePath;
    // A reward checkpoint trained offline (`prfl train-reward`), used when there is no state to
    // resume; empty: start from a fresh reward head.
    std::string RewardPath;
    prfl::Config Config;
    // Train on a library thread whenever a batch is queued; otherwise call TrainStep().
    bool bTrainInBackground = true;
    prfl::StepMode Mode = prfl::StepMode::Reward;
    // Noise timestep in [0, 1000] at which Score judges latents (0 = clean latents).
    float ScoreTimestep = 0.0f;
};

// Outcome of a control call: a status and a message for the user (never an exception, because
// Unreal code is usually built without exception handling around gameplay calls).
struct FPrflResult
{
    prfl::Status Status = prfl::Status::Ok;
    std::string Message;

    bool Ok() const noexcept { return Status == prfl::Status::Ok; }
    static FPrflResult Success() { return FPrflResult{}; }
    static FPrflResult Failure(prfl::Status InStatus, std::string InMessage)
    {
        return FPrflResult{InStatus, std::move(InMessage)};
    }
};

class FPrflCore
{
public:
    FPrflCore() = default;
    ~FPrflCore() { Close(); }
    FPrflCore(const FPrflCore&) = delete;
    FPrflCore& operator=(const FPrflCore&) = delete;

    // Creates the runtime, loads the generator, resumes (StatePath) or initialises the reward
    // model, and starts the background trainer if asked. Closes a previously open runtime first.
    FPrflResult Open(const FPrflCoreSettings& InSettings) noexcept;
    // Stops the trainer and frees the runtime (does not save). Safe to call repeatedly.
    void Close() noexcept;
    bool IsOpen() const noexcept;

    // Producers. True when queued. False when the queue is full (counted in DroppedSubmissions:
    // under load a game drops ratings rather than stalling a frame), the input is invalid
    // (counted in InvalidSubmissions, reason in LastSubmitError) or the core is closed.
    bool SubmitRating(const float* Latent, size_t LatentLen, const float* Text, size_t TextLen, float Label,
                      const float* Image = nullptr, size_t ImageLen = 0) noexcept;
    bool SubmitPreference(const float* Win, const float* Lose, size_t LatentLen, const float* Text, size_t TextLen,
                          const float* Image = nullptr, size_t ImageLen = 0) noexcept;

    // Probability in (0, 1) that a latent is to the taste learnt, judged at Settings.ScoreTimestep.
    FPrflResult Score(const float* Latent, size_t LatentLen, const float* Text, size_t TextLen,
                      float& OutScore) noexcept;
    // One manual step (when not training in background). NotEnoughSamples means "not yet".
    FPrflResult TrainStep(prfl::StepStats& OutStats) noexcept;
    // Saves to Settings.StatePath (or Path), pausing the background trainer around the save
    // because the library only saves an idle runtime.
    FPrflResult Save(const std::string& Path = std::string()) noexcept;
    FPrflResult QueueStats(prfl::QueueStats& OutStats) const noexcept;

    uint64_t DroppedSubmissions() const noexcept { return Dropped.load(std::memory_order_relaxed); }
    uint64_t InvalidSubmissions() const noexcept { return Invalid.load(std::memory_order_relaxed); }
    std::string LastSubmitError() const;
    bool IsTrainingInBackground() const noexcept { return bBackgroundRunning.load(); }

    // A star rating (1..MaxStars, clamped) as the 0/1 label the reward loss takes: the top half
    // is good, the bottom half bad. False for the middle rating of an odd scale, which says
    // nothing about preference and must not be submitted as either.
    static bool LabelFromStars(int Stars, int MaxStars, float& OutLabel) noexcept;

private:
    bool Accept(bool bQueued, prfl::Status Why) noexcept;
    FPrflResult OpenLocked(const FPrflCoreSettings& InSettings);
    void CloseLocked() noexcept;

    // Shared by producers, exclusive for Open/Close: a submission never races the destruction
    // of the runtime it uses.
    mutable std::shared_mutex RuntimeLock;
    // Serialises control calls (step, score, save), which the C API wants on one thread.
    mutable std::mutex ControlLock;
    prfl::Runtime Runtime;
    FPrflCoreSettings Settings;
    std::atomic<bool> bBackgroundRunning{false};

    std::atomic<uint64_t> Dropped{0};
    std::atomic<uint64_t> Invalid{0};
    mutable std::mutex ErrorLock;
    std::string LastError;
};
