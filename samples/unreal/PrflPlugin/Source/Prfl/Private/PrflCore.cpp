// Engine-independent logic of the Prfl plugin (see PrflCore.h). Built by UBT inside the Prfl
// module and by samples/run.sh with g++ for the CI test in samples/unreal/tests/.
#include "PrflCore.h"

#include <exception>
#include <filesystem>
#include <system_error>
#include <utility>

namespace
{
// Turns whatever a wrapper call threw into a result: prfl::Error keeps its status; anything else
// (std::bad_alloc, filesystem errors) is an internal error.
template <typename F>
FPrflResult Guarded(F&& Body) noexcept
{
    try
    {
        return Body();
    }
    catch (const prfl::Error& E)
    {
        return FPrflResult::Failure(E.status(), E.what());
    }
    catch (const std::exception& E)
    {
        return FPrflResult::Failure(prfl::Status::Internal, E.what());
    }
    catch (...)
    {
        return FPrflResult::Failure(prfl::Status::Internal, "unknown exception");
    }
}

FPrflResult NotOpen()
{
    return FPrflResult::Failure(prfl::Status::NotLoaded, "PrflCore is not open");
}
}  // namespace

FPrflResult FPrflCore::Open(const FPrflCoreSettings& InSettings) noexcept
{
    std::unique_lock<std::shared_mutex> Lock(RuntimeLock);
    std::lock_guard<std::mutex> Control(ControlLock);
    CloseLocked();
    return Guarded([&] { return OpenLocked(InSettings); });
}

FPrflResult FPrflCore::OpenLocked(const FPrflCoreSettings& InSettings)
{
    // Built in a local first: if any step throws, the half-made runtime is destroyed and the core
    // stays closed.
    prfl::Runtime Fresh(InSettings.Config);
    Fresh.load_generator(InSettings.GeneratorPath);
    std::error_code Ec;
    if (!InSettings.StatePath.empty() && std::filesystem::exists(InSettings.StatePath, Ec))
    {
        Fresh.load(InSettings.StatePath);
    }
    else if (!InSettings.RewardPath.empty())
    {
        Fresh.load_reward(InSettings.RewardPath);
    }
    else
    {
        Fresh.init_reward();
    }
    if (InSettings.bTrainInBackground)
    {
        Fresh.start(InSettings.Mode);
    }
    Runtime = std::move(Fresh);
    Settings = InSettings;
    bBackgroundRunning = InSettings.bTrainInBackground;
    Dropped = 0;
    Invalid = 0;
    return FPrflResult::Success();
}

void FPrflCore::Close() noexcept
{
    std::unique_lock<std::shared_mutex> Lock(RuntimeLock);
    std::lock_guard<std::mutex> Control(ControlLock);
    CloseLocked();
}

void FPrflCore::CloseLocked() noexcept
{
    Runtime.reset();  // prfl_destroy stops the background trainer before freeing
    bBackgroundRunning = false;
}

bool FPrflCore::IsOpen() const noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    return static_cast<bool>(Runtime);
}

bool FPrflCore::SubmitRating(const float* Latent, size_t LatentLen, const float* Text, size_t TextLen, float Label,
                             const float* Image, size_t ImageLen) noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    if (!Runtime) return false;
    prfl::Status Why = prfl::Status::Ok;
    const bool bQueued = Runtime.try_submit_labeled({Latent, LatentLen}, {Text, TextLen}, {Image, ImageLen}, Label, &Why);
    return Accept(bQueued, Why);
}

bool FPrflCore::SubmitPreference(const float* Win, const float* Lose, size_t LatentLen, const float* Text,
                                 size_t TextLen, const float* Image, size_t ImageLen) noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    if (!Runtime) return false;
    prfl::Status Why = prfl::Status::Ok;
    const bool bQueued =
        Runtime.try_submit_pair({Win, LatentLen}, {Lose, LatentLen}, {Text, TextLen}, {Image, ImageLen}, &Why);
    return Accept(bQueued, Why);
}

bool FPrflCore::Accept(bool bQueued, prfl::Status Why) noexcept
{
    if (bQueued) return true;
    if (Why == prfl::Status::QueueFull)
    {
        Dropped.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    Invalid.fetch_add(1, std::memory_order_relaxed);
    try
    {
        // prfl::last_error() is per thread: capture it here, on the submitting thread, so the
        // game thread can show it later.
        std::string Message = prfl::last_error() + " (" + prfl::status_name(Why) + ")";
        std::lock_guard<std::mutex> Guard(ErrorLock);
        LastError = std::move(Message);
    }
    catch (...)
    {
        // Out of memory while recording a diagnostic: the counter still says it happened.
    }
    return false;
}

std::string FPrflCore::LastSubmitError() const
{
    std::lock_guard<std::mutex> Guard(ErrorLock);
    return LastError;
}

FPrflResult FPrflCore::Score(const float* Latent, size_t LatentLen, const float* Text, size_t TextLen,
                             float& OutScore) noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    std::lock_guard<std::mutex> Control(ControlLock);
    if (!Runtime) return NotOpen();
    return Guarded([&] {
        OutScore = Runtime.score({Latent, LatentLen}, Settings.ScoreTimestep, {Text, TextLen});
        return FPrflResult::Success();
    });
}

FPrflResult FPrflCore::TrainStep(prfl::StepStats& OutStats) noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    std::lock_guard<std::mutex> Control(ControlLock);
    if (!Runtime) return NotOpen();
    return Guarded([&] {
        OutStats = Runtime.step(Settings.Mode);
        return FPrflResult::Success();
    });
}

FPrflResult FPrflCore::Save(const std::string& Path) noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    std::lock_guard<std::mutex> Control(ControlLock);
    if (!Runtime) return NotOpen();
    return Guarded([&] {
        const std::string Target = Path.empty() ? Settings.StatePath : Path;
        if (Target.empty())
        {
            return FPrflResult::Failure(prfl::Status::InvalidArgument, "no StatePath configured and no path given");
        }
        const std::filesystem::path Parent = std::filesystem::path(Target).parent_path();
        if (!Parent.empty()) std::filesystem::create_directories(Parent);

        const bool bWasRunning = bBackgroundRunning.load();
        if (bWasRunning)
        {
            Runtime.stop();
            bBackgroundRunning = false;
        }
        FPrflResult Result = Guarded([&] {
            Runtime.save(Target);
            return FPrflResult::Success();
        });
        // Resume training even when the save failed: a failed save should not silently turn the
        // learner off.
        if (bWasRunning)
        {
            Runtime.start(Settings.Mode);
            bBackgroundRunning = true;
        }
        return Result;
    });
}

FPrflResult FPrflCore::QueueStats(prfl::QueueStats& OutStats) const noexcept
{
    std::shared_lock<std::shared_mutex> Lock(RuntimeLock);
    if (!Runtime) return NotOpen();
    return Guarded([&] {
        OutStats = Runtime.queue_stats();
        return FPrflResult::Success();
    });
}

bool FPrflCore::LabelFromStars(int Stars, int MaxStars, float& OutLabel) noexcept
{
    if (MaxStars < 2) return false;  // a one-star scale cannot express a preference
    const int Clamped = Stars < 1 ? 1 : (Stars > MaxStars ? MaxStars : Stars);
    // Compare 2 * Stars with MaxStars + 1 (twice the midpoint) to stay in integers.
    const int Twice = 2 * Clamped, Middle = MaxStars + 1;
    if (Twice == Middle) return false;
    OutLabel = Twice > Middle ? 1.0f : 0.0f;
    return true;
}
