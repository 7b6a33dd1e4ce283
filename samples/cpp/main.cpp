// The prfl C++ wrapper (bindings/cpp/prfl.hpp) end to end, the way a studio tool uses it:
//
//   Runtime from a Config builder -> load generator -> fresh reward head -> two std::thread
//   producers submit preference pairs (Bradley-Terry) through the exception-free try_submit_pair
//   while the control thread trains -> score -> save -> reload into a fresh runtime whose generator
//   comes from memory (the diffusers-layout copy of the same weights) -> same scores.
//   In between, one PRFL step fine-tunes the generator (LoRA) against the reward just learnt.
//   A second, model-less runtime shows Backpressure::DropOldest.
//
// usage: prfl_sample_cpp GENERATOR_DIR WORK_DIR [SAFETENSORS CONFIG_JSON]
//   GENERATOR_DIR  Wan2.1 T2V checkpoint, in_dim 16, text_dim 24 (CI: tests/fixtures/wan/t2v_small/original)
//   WORK_DIR       existing directory for the saved runtime
//   SAFETENSORS, CONFIG_JSON  the same weights as one file plus its config.json, loaded with
//                  load_generator_from_memory (CI: tests/fixtures/wan/t2v_small/diffusers/...)

#include "prfl.hpp"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// Input sizes of the fixture model: latent [16,3,4,4], text [7 tokens, 24].
constexpr uint32_t kC = 16, kF = 3, kH = 4, kW = 4, kTokens = 7, kTextDim = 24;
constexpr uint32_t kBatch = 2;          // pairs per step
constexpr uint32_t kQueue = 3;          // small, so producers meet QueueFull
constexpr int kPairsPerProducer = 4;
constexpr int kSteps = 4;
constexpr auto kDeadline = std::chrono::seconds(120);

[[noreturn]] void fail(const std::string& what) {
    std::cerr << "cpp sample: FAILED: " << what << "\n";
    std::exit(1);
}

void expect(bool ok, const std::string& what) {
    if (!ok) fail(what);
}

// Runs f, which must throw prfl::Error with the given status.
template <typename F>
void expect_error(prfl::Status want, const char* what, F&& f) {
    try {
        f();
    } catch (const prfl::Error& e) {
        if (e.status() != want) fail(std::string(what) + ": wrong status: " + e.what());
        std::cout << "  expected error: " << e.what() << "\n";
        return;
    }
    fail(std::string(what) + ": did not throw");
}

// Synthetic clips: smooth motion is "good", flicker is "bad" (see samples/c/main.c).
std::vector<float> make_clip(std::mt19937& rng, bool good) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(size_t{kC} * kF * kH * kW);
    for (uint32_t c = 0; c < kC; ++c) {
        const float phase = u(rng) * 3.14159f;
        for (uint32_t f = 0; f < kF; ++f)
            for (uint32_t y = 0; y < kH; ++y)
                for (uint32_t x = 0; x < kW; ++x) {
                    const float base = std::sin(phase + 0.7f * x + 0.5f * y + (good ? 0.3f : 2.5f) * f);
                    v[((c * kF + f) * kH + y) * kW + x] = base + (good ? 0.05f : 0.6f) * u(rng);
                }
    }
    return v;
}

std::vector<float> make_text(uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-0.5f, 0.5f);
    std::vector<float> t(size_t{kTokens} * kTextDim);
    for (auto& x : t) x = u(rng);
    return t;
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot read " + path);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool close_enough(float a, float b) { return std::fabs(a - b) <= 1e-5f * (1.0f + std::fabs(a)); }

prfl::Config sample_config() {
    return prfl::Config()
        .device(prfl::Device::Cpu)
        .queue(kQueue, prfl::Backpressure::RejectNewest)
        .latent_shape(kC, kF, kH, kW)
        .text_shape(kTokens, kTextDim)
        .batch_size(kBatch)
        .reward_loss(prfl::RewardLoss::Bt)
        .reward_blocks(2)
        .reward_lr(1e-5f, 1e-3f)
        .prfl_steps(4)   // a short rollout: the fixture model is tiny, and so is the sample's budget
        .lora(4, 4.0f)   // fine-tune LoRA adapters, not the whole generator
        .seed(11);
}

void print_step(const char* what, const prfl::StepStats& s) {
    std::printf("  %s: step %llu samples %u loss %.4f accuracy %.2f grad_norm %.4f %.3fs\n", what,
                static_cast<unsigned long long>(s.step), s.samples, s.loss, s.accuracy, s.grad_norm, s.seconds);
    expect(std::isfinite(s.loss), "step loss is finite");
}

// A producer thread: one artist comparing two takes of the same shot, repeatedly.
struct Producer {
    int accepted = 0;
    int queue_full = 0;
    prfl::Status error = prfl::Status::Ok;
    std::string error_text;

    void run(prfl::Runtime& rt, const std::vector<float>& text, uint32_t seed) {
        std::mt19937 rng(seed);
        for (int i = 0; i < kPairsPerProducer; ++i) {
            const auto win = make_clip(rng, true);
            const auto lose = make_clip(rng, false);
            const auto deadline = std::chrono::steady_clock::now() + kDeadline;
            prfl::Status why = prfl::Status::Ok;
            // The hot path: no exceptions, QueueFull is an answer, not an error. A game would
            // usually drop the sample or retry next frame; this sample retries shortly.
            while (!rt.try_submit_pair(win, lose, text, {}, &why)) {
                if (why != prfl::Status::QueueFull || std::chrono::steady_clock::now() > deadline) {
                    error = why;
                    error_text = prfl::last_error();  // per thread: must be read on this thread
                    return;
                }
                ++queue_full;
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
            ++accepted;
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3 && argc != 5) {
        std::cerr << "usage: " << argv[0] << " GENERATOR_DIR WORK_DIR [SAFETENSORS CONFIG_JSON]\n";
        return 2;
    }
    const std::string generator = argv[1];
    const std::string save_path = std::string(argv[2]) + "/cpp_sample.prfl";

    try {
        std::cout << "prfl " << prfl::version() << ", ABI " << prfl::abi_version() << "\n";
        std::atomic<int> log_lines{0};
        prfl::set_log_callback(
            [&log_lines](prfl::LogLevel level, const char* message) {
                ++log_lines;
                if (level <= prfl::LogLevel::Warn) std::cerr << "  [prfl] " << message << "\n";
            },
            prfl::LogLevel::Info);

        // -- create and load ------------------------------------------------------------------
        const prfl::Config cfg = sample_config();
        prfl::Runtime rt(cfg);
        const auto text = make_text(3);
        std::mt19937 probe_rng(5);
        const auto good = make_clip(probe_rng, true);
        const auto bad = make_clip(probe_rng, false);

        expect_error(prfl::Status::NotLoaded, "score before loading", [&] { rt.score(good, 500.0f, text); });
        rt.load_generator(generator);
        rt.init_reward();
        std::cout << "loaded " << generator << ", fresh reward head (Bradley-Terry)\n";

        // -- caller mistakes: exceptions on the throwing API, a status on the try_ API -----------
        expect_error(prfl::Status::Shape, "mismatched pair",
                     [&] { rt.submit_pair(good, prfl::TensorView(bad.data(), bad.size() - 1), text); });
        prfl::Status why = prfl::Status::Ok;
        expect(!rt.try_submit_pair(good, bad, prfl::TensorView(text.data(), 5), {}, &why) && why == prfl::Status::Shape,
               "try_submit_pair reports a short text as Status::Shape");
        expect_error(prfl::Status::UnknownEnum, "unknown step mode", [&] { rt.step(static_cast<prfl::StepMode>(9)); });

        // -- two producers, the control thread trains ------------------------------------------
        Producer producers[2];
        std::thread threads[2];
        for (int i = 0; i < 2; ++i)
            threads[i] = std::thread([&, i] { producers[i].run(rt, text, 100 + i); });
        const auto deadline = std::chrono::steady_clock::now() + kDeadline;
        prfl::StepStats st{};
        for (int done = 0; done < kSteps;) {
            if (!rt.try_step(prfl::StepMode::Reward, st)) {  // not enough pairs yet
                expect(std::chrono::steady_clock::now() < deadline, "a batch arrives in time");
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                continue;
            }
            expect(st.mode == static_cast<int32_t>(prfl::StepMode::Reward), "step stats carry the mode");
            print_step("reward step", st);
            ++done;
        }
        int accepted = 0, full = 0;
        for (int i = 0; i < 2; ++i) {
            threads[i].join();
            if (producers[i].error != prfl::Status::Ok)
                fail("producer " + std::to_string(i) + ": " + prfl::status_name(producers[i].error) + ": " +
                     producers[i].error_text);
            std::printf("  producer %d: %d pairs accepted, %d QueueFull retries\n", i, producers[i].accepted,
                        producers[i].queue_full);
            accepted += producers[i].accepted;
            full += producers[i].queue_full;
        }
        const prfl::QueueStats q = rt.queue_stats();
        std::printf("  queue: queued %u accepted %llu rejected_full %llu consumed %llu\n", q.queued,
                    static_cast<unsigned long long>(q.accepted), static_cast<unsigned long long>(q.rejected_full),
                    static_cast<unsigned long long>(q.consumed));
        expect(q.accepted == static_cast<uint64_t>(accepted) && q.rejected_full == static_cast<uint64_t>(full),
               "queue statistics agree with the producers");
        expect(q.consumed == uint64_t{kSteps} * kBatch, "each step consumed one batch of pairs");

        // -- scoring ---------------------------------------------------------------------------
        const float s_good = rt.score(good, 500.0f, text);
        const float s_bad = rt.score(bad, 500.0f, text);
        std::vector<float> both(good);
        both.insert(both.end(), bad.begin(), bad.end());
        const std::vector<float> ts{500.0f, 500.0f};
        std::vector<float> texts(text);  // one text per latent
        texts.insert(texts.end(), text.begin(), text.end());
        const auto batch = rt.score_batch(both, 2, ts, texts);
        std::printf("scores at t=500: smooth %.5f, flickering %.5f (batched %.5f, %.5f)\n", s_good, s_bad, batch[0],
                    batch[1]);
        expect(std::isfinite(s_good) && std::isfinite(s_bad), "scores are finite");
        expect(close_enough(s_good, batch[0]) && close_enough(s_bad, batch[1]), "score_batch matches score");
        expect_error(prfl::Status::Shape, "one timestep for two latents",
                     [&] { rt.score_batch(both, 2, prfl::TensorView(ts.data(), 1), texts); });

        // -- early rejection: pick candidates mid-sampling ----------------------------------------
        {
            // A host's own sampler: keep the better of the two clips at t = 500.
            std::vector<float> scores;
            const auto best = rt.select_candidates(both, 2, 500.0f, texts, 1, &scores);
            expect(best.size() == 1 && best[0] == (scores[1] > scores[0] ? 1u : 0u) &&
                       close_enough(scores[0], batch[0]),
                   "select_candidates keeps the best score");
            // The library's sampler: 4 candidates, scored after 2 of 5 steps, 2 finished.
            const size_t n = 4;
            std::mt19937 noise_rng(9);
            std::normal_distribution<float> normal;
            std::vector<float> noise(n * good.size());
            for (auto& v : noise) v = normal(noise_rng);
            std::vector<float> cand_texts;
            for (size_t i = 0; i < n; ++i) cand_texts.insert(cand_texts.end(), text.begin(), text.end());
            const auto r = rt.sample_early_reject(noise, n, cand_texts,
                                                  prfl::SampleConfig().steps(5).reject_at_step(2).keep(2));
            std::printf("early rejection: kept %u and %u of %zu at t=%.0f, %llu of %llu generator evaluations, "
                        "%.0f%% saved\n",
                        r.kept[0], r.kept[1], n, r.stats.reject_timestep,
                        static_cast<unsigned long long>(r.stats.generator_evals),
                        static_cast<unsigned long long>(r.stats.full_generator_evals), 100.0 * r.stats.saved_fraction);
            expect(r.kept.size() == 2 && r.kept[0] < r.kept[1] && r.latents.size() == 2 * good.size() &&
                       r.stats.saved_fraction > 0.0,
                   "sample_early_reject finishes the survivors and saves compute");
            expect_error(prfl::Status::InvalidArgument, "keep more than count",
                         [&] { rt.sample_early_reject(noise, n, cand_texts, prfl::SampleConfig().keep(5)); });
        }

        // -- PRFL: fine-tune the generator against the learnt reward -----------------------------
        // A PRFL step takes batch_size queued samples of either kind and uses their text to
        // condition a rollout; the generator's LoRA adapters learn to raise the reward mid-rollout.
        {
            std::mt19937 rng(77);
            for (uint32_t i = 0; i < kBatch; ++i) rt.submit_pair(make_clip(rng, true), make_clip(rng, false), text);
            const prfl::StepStats p = rt.step(prfl::StepMode::Prfl);
            std::printf("  prfl step: step %llu samples %u loss %.4f reward %.4f mid_step %u peak %.1f KiB %.3fs\n",
                        static_cast<unsigned long long>(p.step), p.samples, p.loss, p.reward, p.mid_step,
                        p.peak_bytes / 1024.0, p.seconds);
            expect(p.mode == static_cast<int32_t>(prfl::StepMode::Prfl) && p.samples == kBatch &&
                       std::isfinite(p.loss) && std::isfinite(p.reward),
                   "PRFL step stats are sane");
            // The reward model is frozen during PRFL: scores do not move.
            expect(close_enough(rt.score(good, 500.0f, text), s_good), "a PRFL step leaves the reward model alone");
        }

        // -- ownership: a Runtime moves, never copies --------------------------------------------
        prfl::Runtime owner = std::move(rt);
        expect(!rt && static_cast<bool>(owner), "moved-from runtime is empty");

        // -- save and reload -----------------------------------------------------------------------
        owner.save(save_path);
        std::cout << "saved " << save_path << "\n";
        prfl::Runtime fresh(cfg);
        if (argc == 5) {
            // Engines often ship weights inside their own archives: hand the bytes over directly.
            const auto bytes = read_file(argv[3]);
            const auto json = read_file(argv[4]);
            fresh.load_generator_from_memory(bytes, std::string(json.begin(), json.end()));
            std::cout << "fresh runtime: generator from memory (" << bytes.size() << " bytes)\n";
        } else {
            fresh.load_generator(generator);
        }
        fresh.load(save_path);
        const float r_good = fresh.score(good, 500.0f, text);
        const float r_bad = fresh.score(bad, 500.0f, text);
        std::printf("reloaded scores: %.5f, %.5f\n", r_good, r_bad);
        expect(close_enough(s_good, r_good) && close_enough(s_bad, r_bad), "reloaded runtime scores the same");
        owner.reset();
        expect(!owner, "reset destroys");

        // -- Backpressure::DropOldest: submissions always succeed, the oldest sample makes room ----
        {
            prfl::Runtime lossy(prfl::Config(cfg).queue(2, prfl::Backpressure::DropOldest));
            std::mt19937 rng(9);
            for (int i = 0; i < 5; ++i) lossy.submit_pair(make_clip(rng, true), make_clip(rng, false), text);
            const auto lq = lossy.queue_stats();
            std::printf("drop-oldest queue: queued %u accepted %llu dropped %llu\n", lq.queued,
                        static_cast<unsigned long long>(lq.accepted), static_cast<unsigned long long>(lq.dropped_oldest));
            expect(lq.queued == 2 && lq.accepted == 5 && lq.dropped_oldest == 3 && lq.rejected_full == 0,
                   "drop-oldest keeps the newest samples");
        }

        prfl::clear_log_callback();
        std::cout << "log callback received " << log_lines.load() << " messages\n";
    } catch (const prfl::Error& e) {
        fail(std::string("unexpected prfl::Error: ") + e.what());
    }
    std::cout << "cpp sample: OK\n";
    return 0;
}
