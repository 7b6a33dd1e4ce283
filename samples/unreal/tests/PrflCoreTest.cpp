// CI test of the Unreal plugin's engine-independent core (PrflPlugin/Source/Prfl/Private/PrflCore),
// built with g++ by samples/run.sh. It lives outside the plugin's Source folder on purpose: UBT
// compiles every .cpp there, and this file has a main().
//
// usage: prfl_unreal_core_test GENERATOR_DIR WORK_DIR
#include "PrflCore.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace
{
constexpr uint32_t C = 16, F = 3, H = 4, W = 4, Tokens = 7, TextDim = 24, Batch = 4;
constexpr auto Deadline = std::chrono::seconds(120);

void Expect(bool bOk, const std::string& What)
{
    if (!bOk)
    {
        std::fprintf(stderr, "unreal core test: FAILED: %s\n", What.c_str());
        std::exit(1);
    }
}

void ExpectOk(const FPrflResult& R, const std::string& What)
{
    Expect(R.Ok(), What + ": " + R.Message);
}

std::vector<float> Clip(std::mt19937& Rng, bool bGood)
{
    std::uniform_real_distribution<float> U(-1.0f, 1.0f);
    std::vector<float> V(size_t{C} * F * H * W);
    for (uint32_t c = 0; c < C; ++c)
    {
        const float Phase = U(Rng) * 3.14159f;
        for (uint32_t f = 0; f < F; ++f)
            for (uint32_t y = 0; y < H; ++y)
                for (uint32_t x = 0; x < W; ++x)
                    V[((c * F + f) * H + y) * W + x] =
                        std::sin(Phase + 0.7f * x + 0.5f * y + (bGood ? 0.3f : 2.5f) * f) + (bGood ? 0.05f : 0.6f) * U(Rng);
    }
    return V;
}

FPrflCoreSettings MakeSettings(const std::string& Generator, const std::string& State, bool bBackground)
{
    FPrflCoreSettings S;
    S.GeneratorPath = Generator;
    S.StatePath = State;
    S.bTrainInBackground = bBackground;
    S.ScoreTimestep = 0.0f;
    S.Config.device(prfl::Device::Cpu)
        .queue(8, prfl::Backpressure::RejectNewest)
        .latent_shape(C, F, H, W)
        .text_shape(Tokens, TextDim)
        .batch_size(Batch)
        .reward_loss(prfl::RewardLoss::Ce)
        .reward_blocks(2)
        .seed(21);
    return S;
}
}  // namespace

int main(int Argc, char** Argv)
{
    if (Argc != 3)
    {
        std::fprintf(stderr, "usage: %s GENERATOR_DIR WORK_DIR\n", Argv[0]);
        return 2;
    }
    const std::string Generator = Argv[1];
    // A nested, not yet existing folder: Save must create it (as under Saved/ in a project).
    const std::string State = std::string(Argv[2]) + "/unreal/Saved/Prfl/preferences.prfl";

    // Labels from star ratings: top half good, bottom half bad, the middle says nothing.
    {
        const auto Label = [](int Stars, int MaxStars) {
            float L = -1.0f;
            return FPrflCore::LabelFromStars(Stars, MaxStars, L) ? L : -1.0f;
        };
        Expect(Label(1, 5) == 0.0f && Label(2, 5) == 0.0f && Label(3, 5) == -1.0f && Label(4, 5) == 1.0f &&
                   Label(5, 5) == 1.0f && Label(9, 5) == 1.0f && Label(0, 5) == 0.0f && Label(2, 4) == 0.0f &&
                   Label(3, 4) == 1.0f && Label(1, 1) == -1.0f,
               "LabelFromStars splits a scale into bad / neutral / good");
    }

    std::mt19937 Rng(1);
    std::vector<float> Text(size_t{Tokens} * TextDim, 0.1f);
    const auto Good = Clip(Rng, true);
    const auto Bad = Clip(Rng, false);

    // Closed core: everything fails softly.
    FPrflCore Core;
    float Score = 0.0f;
    Expect(!Core.IsOpen() && !Core.SubmitRating(Good.data(), Good.size(), Text.data(), Text.size(), 1.0f),
           "a closed core refuses submissions without crashing");
    Expect(Core.Score(Good.data(), Good.size(), Text.data(), Text.size(), Score).Status == prfl::Status::NotLoaded,
           "a closed core reports NotLoaded");

    // A bad generator path fails Open and leaves the core closed.
    const FPrflResult Bad_Open = Core.Open(MakeSettings("/nonexistent/generator", State, false));
    Expect(!Bad_Open.Ok() && !Core.IsOpen(), "opening a missing generator fails cleanly");
    std::printf("  expected failure: %s\n", Bad_Open.Message.c_str());

    // Manual training: the tool steps when it wants to.
    ExpectOk(Core.Open(MakeSettings(Generator, State, false)), "open (manual training)");
    Expect(!Core.IsTrainingInBackground(), "manual mode");
    prfl::StepStats Stats{};
    Expect(Core.TrainStep(Stats).Status == prfl::Status::NotEnoughSamples, "an empty queue is NotEnoughSamples");
    for (int i = 0; i < 2 * static_cast<int>(Batch); ++i)
    {
        const bool bGood = i % 2 == 0;
        const auto V = Clip(Rng, bGood);
        float Label = 0.0f;
        Expect(FPrflCore::LabelFromStars(bGood ? 5 : 1, 5, Label) &&
                   Core.SubmitRating(V.data(), V.size(), Text.data(), Text.size(), Label),
               "submit a rating");
    }
    for (int i = 0; i < 2; ++i)
    {
        ExpectOk(Core.TrainStep(Stats), "manual step");
        std::printf("  manual step %llu: loss %.4f accuracy %.2f\n", static_cast<unsigned long long>(Stats.step),
                    Stats.loss, Stats.accuracy);
    }

    // Invalid input is counted and explained, never thrown.
    Expect(!Core.SubmitRating(Good.data(), Good.size() - 3, Text.data(), Text.size(), 1.0f) &&
               Core.InvalidSubmissions() == 1 && !Core.LastSubmitError().empty(),
           "an invalid submission is counted with a reason");
    std::printf("  invalid submission: %s\n", Core.LastSubmitError().c_str());

    // A full queue drops (never blocks) and counts.
    for (int i = 0; i < 12; ++i) Core.SubmitRating(Good.data(), Good.size(), Text.data(), Text.size(), 1.0f);
    prfl::QueueStats Q{};
    ExpectOk(Core.QueueStats(Q), "queue stats");
    Expect(Q.queued == 8 && Core.DroppedSubmissions() == 4, "12 submissions into 8 free slots drop 4");
    std::printf("  queue: %u queued, %llu dropped\n", Q.queued, static_cast<unsigned long long>(Core.DroppedSubmissions()));

    float GoodScore = 0.0f, BadScore = 0.0f;
    ExpectOk(Core.Score(Good.data(), Good.size(), Text.data(), Text.size(), GoodScore), "score");
    ExpectOk(Core.Score(Bad.data(), Bad.size(), Text.data(), Text.size(), BadScore), "score");
    ExpectOk(Core.Save(), "save (manual mode)");
    std::printf("  saved %s (scores %.5f, %.5f)\n", State.c_str(), GoodScore, BadScore);
    Core.Close();
    Core.Close();  // idempotent
    Expect(!Core.IsOpen(), "closed");

    // Background training, resumed from the saved state, fed by two threads.
    ExpectOk(Core.Open(MakeSettings(Generator, State, true)), "open (background, resume)");
    Expect(Core.IsTrainingInBackground(), "background mode");
    float Resumed = 0.0f;
    ExpectOk(Core.Score(Good.data(), Good.size(), Text.data(), Text.size(), Resumed), "score after resume");
    Expect(std::fabs(Resumed - GoodScore) <= 1e-5f * (1.0f + std::fabs(GoodScore)), "resumed state scores the same");

    std::vector<std::thread> Producers;
    for (int p = 0; p < 2; ++p)
    {
        Producers.emplace_back([&Core, &Text, p] {
            std::mt19937 R(100 + p);
            for (int i = 0; i < 8; ++i)
            {
                const auto V = Clip(R, i % 2 == 0);
                const auto Until = std::chrono::steady_clock::now() + Deadline;
                // Retry (unlike a game, which would drop) so the counts below are exact.
                while (!Core.SubmitRating(V.data(), V.size(), Text.data(), Text.size(), i % 2 == 0 ? 1.0f : 0.0f) &&
                       std::chrono::steady_clock::now() < Until)
                    std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
        });
    }
    for (auto& T : Producers) T.join();
    Expect(Core.InvalidSubmissions() == 0, "no invalid submissions from the producers");

    // Saving pauses the background trainer and resumes it.
    ExpectOk(Core.Save(), "save while training in background");
    Expect(Core.IsTrainingInBackground(), "background training resumed after the save");
    const auto Until = std::chrono::steady_clock::now() + Deadline;
    for (;;)
    {
        ExpectOk(Core.QueueStats(Q), "queue stats");
        if (Q.queued < Batch) break;
        Expect(std::chrono::steady_clock::now() < Until, "the background trainer drains the queue");
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::printf("  background: consumed %llu, queued %u\n", static_cast<unsigned long long>(Q.consumed), Q.queued);
    Expect(Core.TrainStep(Stats).Status == prfl::Status::Busy, "manual steps are refused while training in background");

    Core.Close();
    std::printf("unreal core test: OK\n");
    return 0;
}
