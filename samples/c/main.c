/* The prfl C ABI end to end, the way an engine integration uses it:
 *
 *   create -> load generator -> fresh reward head -> two producer threads submit rated clips
 *   while the control thread steps the reward trainer -> background trainer -> score ->
 *   save -> reload into a fresh runtime (same scores) -> destroy.
 *
 * Every status is checked; the expected failures (bad shapes, NaNs, unknown enums, BUSY while the
 * background trainer runs, ...) are provoked on purpose to show what a host sees.
 *
 * usage: prfl_sample_c GENERATOR_DIR WORK_DIR
 *   GENERATOR_DIR  a Wan2.1 T2V checkpoint with in_dim 16 and text_dim 24 (CI uses the test
 *                  fixture tests/fixtures/wan/t2v_small/original)
 *   WORK_DIR       an existing directory for the saved runtime
 *
 * environment (optional):
 *   PRFL_SAMPLE_DEVICE        cpu (default), cuda or auto: where the runtime trains and scores
 *                             (auto: the first usable GPU, else the CPU; the Windows run under
 *                             Wine uses it, where the CUDA probe finds no driver)
 *   PRFL_SAMPLE_CUDA_LIB_DIR  a folder holding libcuda, libnvrtc, libcublas and libcublasLt
 *                             (`cuda_library_dir`); CI points it at the emulated device's
 *                             stand-ins (tests/cuda_emu/), a GPU machine at the CUDA wheels
 */
#define _POSIX_C_SOURCE 200809L

#include "prfl.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Sizes of the fixture model's inputs: latent [C,F,H,W] = [16,3,4,4], text [7 tokens, 24]. */
enum { C = 16, F = 3, H = 4, W = 4, LATENT_LEN = C * F * H * W, TEXT_TOKENS = 7, TEXT_DIM = 24,
       TEXT_LEN = TEXT_TOKENS * TEXT_DIM };
enum { BATCH = 4, QUEUE_CAPACITY = 6, PER_PRODUCER = 8, MANUAL_STEPS = 4, BACKGROUND_SAMPLES = 8 };
/* Small enough that producers outrun the trainer and meet QUEUE_FULL (the backpressure path). */
static const double DEADLINE_S = 120.0; /* generous: valgrind makes everything ~50x slower */

/* ------------------------------------------------------------------------------------------ */
/* Checking helpers: a failed check prints the status, the call and prfl_last_error(), then exits. */

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "c sample: FAILED: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void expect_status(PrflStatus got, PrflStatus want, const char *call, int line) {
    if (got != want) {
        const char *detail = prfl_last_error();
        fail("line %d: %s returned %d, expected %d (%s)", line, call, (int)got, (int)want,
             detail ? detail : "");
    }
}
#define CHECK(call) expect_status((call), PRFL_OK, #call, __LINE__)
/* An expected failure must also leave a message in prfl_last_error() for this thread. */
#define EXPECT_ERR(call, want)                                                          \
    do {                                                                                \
        expect_status((call), (want), #call, __LINE__);                                 \
        const char *m_ = prfl_last_error();                                             \
        if (!m_ || !*m_) fail("line %d: %s left prfl_last_error() empty", __LINE__, #call); \
        printf("  expected failure %-28s -> %s\n", #want, m_);                          \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Synthetic clips. A "good" clip moves smoothly over frames, a "bad" one flickers: the kind of
 * motion-quality judgement artists make, so labels carry a learnable signal. */

static uint64_t next_u64(uint64_t *s) { /* xorshift64*: deterministic per thread, no shared state */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static float uniform(uint64_t *s) { return (float)((next_u64(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static void make_clip(uint64_t *rng, int good, float *latent) {
    for (int c = 0; c < C; c++) {
        const float phase = uniform(rng) * 3.14159f;
        for (int f = 0; f < F; f++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    const float base = sinf(phase + 0.7f * (float)x + 0.5f * (float)y + (good ? 0.3f : 2.5f) * (float)f);
                    latent[((c * F + f) * H + y) * W + x] = base + (good ? 0.05f : 0.6f) * uniform(rng);
                }
    }
}

static void make_text(uint64_t seed, float *text) {
    for (int i = 0; i < TEXT_LEN; i++) text[i] = 0.5f * uniform(&seed);
}

/* ------------------------------------------------------------------------------------------ */
/* Producers: game/tool threads that turn artists' ratings into samples. Submission never blocks;
 * on QUEUE_FULL (Backpressure REJECT_NEWEST) a producer decides what to do - here it waits a
 * little and retries, counting every rejection so the queue statistics can be checked. */

typedef struct {
    PrflRuntime *rt;
    const float *text;
    uint64_t seed;
    int count;
    int accepted;
    int rejected_full;
    PrflStatus error; /* first unexpected status, PRFL_OK if none */
    char error_text[256];
} Producer;

static void *produce(void *arg) {
    Producer *p = (Producer *)arg;
    float latent[LATENT_LEN];
    uint64_t rng = p->seed;
    for (int i = 0; i < p->count; i++) {
        const int good = i % 2 == 0;
        make_clip(&rng, good, latent);
        const double deadline = now_s() + DEADLINE_S;
        for (;;) {
            const PrflStatus s = prfl_submit_labeled(p->rt, latent, LATENT_LEN, p->text, TEXT_LEN, NULL, 0,
                                                     good ? 1.0f : 0.0f);
            if (s == PRFL_OK) {
                p->accepted++;
                break;
            }
            if (s == PRFL_ERR_QUEUE_FULL && now_s() < deadline) {
                p->rejected_full++;
                sleep_ms(1);
                continue;
            }
            /* prfl_last_error() is per thread: read it here, the main thread cannot. */
            p->error = s;
            snprintf(p->error_text, sizeof p->error_text, "%s", prfl_last_error() ? prfl_last_error() : "");
            return NULL;
        }
    }
    return NULL;
}

/* Submits from the calling thread, retrying on QUEUE_FULL. */
static void submit_clips(PrflRuntime *rt, const float *text, uint64_t seed, int count) {
    Producer p = {rt, text, seed, count, 0, 0, PRFL_OK, ""};
    produce(&p);
    if (p.error != PRFL_OK) fail("submit: status %d (%s)", (int)p.error, p.error_text);
}

/* ------------------------------------------------------------------------------------------ */
/* Logging: called from any library thread, so it only formats and writes one line. */

static void on_log(void *user, int32_t level, const char *message) {
    (void)user;
    static const char *names[] = {"off", "error", "warn", "info", "debug", "trace"};
    fprintf(stderr, "  [prfl %s] %s\n", level >= 0 && level <= 5 ? names[level] : "?", message);
}

/* ------------------------------------------------------------------------------------------ */

static PrflConfig sample_config(void) {
    PrflConfig cfg;
    prfl_config_default(&cfg);
    if (cfg.struct_size != sizeof(PrflConfig) || cfg.abi_version != PRFL_ABI_VERSION)
        fail("prfl_config_default wrote struct_size %u abi %u; this program has %zu, abi %d", cfg.struct_size,
             cfg.abi_version, sizeof(PrflConfig), PRFL_ABI_VERSION);
    /* CPU unless asked: CI has no GPU (AUTO would also fall back to the CPU). With cuda, no CPU
     * fallback: the run must really happen on the device it asked for. */
    const char *device = getenv("PRFL_SAMPLE_DEVICE");
    if (device == NULL || strcmp(device, "cpu") == 0) {
        cfg.device = PRFL_DEVICE_CPU;
    } else if (strcmp(device, "cuda") == 0) {
        cfg.device = PRFL_DEVICE_CUDA;
        cfg.device_index = 0;
        cfg.cuda_library_dir = getenv("PRFL_SAMPLE_CUDA_LIB_DIR"); /* NULL: the system's search path */
        cfg.cpu_fallback = 0;
    } else if (strcmp(device, "auto") == 0) {
        cfg.device = PRFL_DEVICE_AUTO;
    } else {
        fail("PRFL_SAMPLE_DEVICE=%s: expected cpu, cuda or auto", device);
    }
    cfg.queue_capacity = QUEUE_CAPACITY;
    cfg.backpressure = PRFL_BACKPRESSURE_REJECT_NEWEST;
    cfg.latent_channels = C;
    cfg.latent_frames = F;
    cfg.latent_height = H;
    cfg.latent_width = W;
    cfg.text_len = TEXT_TOKENS;
    cfg.text_dim = TEXT_DIM;
    cfg.image_len = 0; /* T2V: no CLIP image features */
    cfg.image_dim = 0;
    cfg.batch_size = BATCH;
    cfg.reward_loss = PRFL_LOSS_CE;
    cfg.reward_blocks = 2;
    cfg.reward_head_lr = 1e-3f;
    cfg.seed = 7;
    return cfg;
}

static void print_step(const char *what, const PrflStepStats *s) {
    printf("  %s: step %llu samples %u loss %.4f accuracy %.2f grad_norm %.4f skipped %u %.3fs\n", what,
           (unsigned long long)s->step, s->samples, s->loss, s->accuracy, s->grad_norm, s->skipped_nonfinite,
           s->seconds);
    if (!isfinite(s->loss)) fail("step loss is not finite");
}

static PrflQueueStats queue_stats(const PrflRuntime *rt) {
    PrflQueueStats q;
    memset(&q, 0, sizeof q);
    q.struct_size = sizeof q; /* the library writes at most this many bytes */
    CHECK(prfl_queue_stats(rt, &q));
    return q;
}

static void print_queue(const PrflQueueStats q) {
    printf("  queue: capacity %u queued %u submitted %llu accepted %llu rejected_full %llu rejected_invalid %llu "
           "dropped %llu consumed %llu\n",
           q.capacity, q.queued, (unsigned long long)q.submitted, (unsigned long long)q.accepted,
           (unsigned long long)q.rejected_full, (unsigned long long)q.rejected_invalid,
           (unsigned long long)q.dropped_oldest, (unsigned long long)q.consumed);
}

static int close_enough(float a, float b) { return fabsf(a - b) <= 1e-5f * (1.0f + fabsf(a)); }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s GENERATOR_DIR WORK_DIR\n", argv[0]);
        return 2;
    }
    const char *generator = argv[1];
    char save_path[4096];
    snprintf(save_path, sizeof save_path, "%s/c_sample.prfl", argv[2]);

    printf("prfl %s, ABI %u\n", prfl_version(), prfl_abi_version());
    if (prfl_abi_version() != PRFL_ABI_VERSION)
        fail("library ABI %u but prfl.h says %d", prfl_abi_version(), PRFL_ABI_VERSION);
    CHECK(prfl_set_log_callback(on_log, NULL, 2 /* errors and warnings */));

    /* -- create -------------------------------------------------------------------------- */
    PrflConfig cfg = sample_config();
    PrflRuntime *rt = NULL;
    {
        PrflConfig wrong = cfg;
        wrong.abi_version = PRFL_ABI_VERSION + 1;
        EXPECT_ERR(prfl_create(&wrong, &rt), PRFL_ERR_VERSION);
        wrong = cfg;
        wrong.backpressure = 42;
        EXPECT_ERR(prfl_create(&wrong, &rt), PRFL_ERR_UNKNOWN_ENUM);
        EXPECT_ERR(prfl_create(NULL, &rt), PRFL_ERR_NULL_POINTER);
    }
    CHECK(prfl_create(&cfg, &rt));
    printf("created runtime (latent [%d,%d,%d,%d], text [%d,%d], batch %d, queue %d)\n", C, F, H, W,
           TEXT_TOKENS, TEXT_DIM, BATCH, QUEUE_CAPACITY);

    float text[TEXT_LEN];
    make_text(99, text);
    float probe[LATENT_LEN], score = 0.0f;
    uint64_t probe_rng = 5;
    make_clip(&probe_rng, 1, probe);
    EXPECT_ERR(prfl_score(rt, probe, LATENT_LEN, 500.0f, text, TEXT_LEN, &score), PRFL_ERR_NOT_LOADED);

    /* -- models -------------------------------------------------------------------------- */
    EXPECT_ERR(prfl_load_generator(rt, "/nonexistent/prfl/checkpoint"), PRFL_ERR_IO);
    CHECK(prfl_load_generator(rt, generator));
    CHECK(prfl_init_reward(rt));
    printf("loaded generator %s, fresh reward head on 2 blocks\n", generator);

    /* -- invalid submissions are rejected up front, never queued -------------------------- */
    EXPECT_ERR(prfl_submit_labeled(rt, probe, LATENT_LEN - 1, text, TEXT_LEN, NULL, 0, 1.0f), PRFL_ERR_SHAPE);
    {
        float bad[LATENT_LEN];
        memcpy(bad, probe, sizeof bad);
        bad[17] = NAN;
        EXPECT_ERR(prfl_submit_labeled(rt, bad, LATENT_LEN, text, TEXT_LEN, NULL, 0, 1.0f), PRFL_ERR_NON_FINITE);
    }
    EXPECT_ERR(prfl_submit_labeled(rt, NULL, LATENT_LEN, text, TEXT_LEN, NULL, 0, 1.0f), PRFL_ERR_NULL_POINTER);
    const int invalid_submits = 3;
    PrflStepStats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    EXPECT_ERR(prfl_step(rt, 7, &st), PRFL_ERR_UNKNOWN_ENUM);
    EXPECT_ERR(prfl_step(rt, PRFL_STEP_REWARD, &st), PRFL_ERR_NOT_ENOUGH_SAMPLES);

    /* -- two producers, one trainer ------------------------------------------------------- */
    Producer producers[2] = {{rt, text, 1, PER_PRODUCER, 0, 0, PRFL_OK, ""},
                             {rt, text, 2, PER_PRODUCER, 0, 0, PRFL_OK, ""}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&threads[i], NULL, produce, &producers[i]) != 0) fail("pthread_create");

    /* The control thread steps whenever a batch is ready; NOT_ENOUGH_SAMPLES just means "later". */
    const double deadline = now_s() + DEADLINE_S;
    for (int done = 0; done < MANUAL_STEPS;) {
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        const PrflStatus s = prfl_step(rt, PRFL_STEP_REWARD, &st);
        if (s == PRFL_ERR_NOT_ENOUGH_SAMPLES && now_s() < deadline) {
            sleep_ms(1);
            continue;
        }
        expect_status(s, PRFL_OK, "prfl_step(REWARD)", __LINE__);
        if (st.mode != PRFL_STEP_REWARD || st.samples != BATCH) fail("step stats: mode %d samples %u", st.mode, st.samples);
        print_step("reward step", &st);
        done++;
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        if (producers[i].error != PRFL_OK)
            fail("producer %d: status %d (%s)", i, (int)producers[i].error, producers[i].error_text);
        printf("  producer %d: %d accepted, %d QUEUE_FULL retries\n", i, producers[i].accepted,
               producers[i].rejected_full);
    }

    /* The library's counters must agree with what the producers saw. */
    PrflQueueStats q = queue_stats(rt);
    print_queue(q);
    const uint64_t accepted = (uint64_t)producers[0].accepted + (uint64_t)producers[1].accepted;
    const uint64_t full = (uint64_t)producers[0].rejected_full + (uint64_t)producers[1].rejected_full;
    if (q.capacity != QUEUE_CAPACITY || q.accepted != accepted || q.rejected_full != full ||
        q.rejected_invalid != (uint64_t)invalid_submits || q.submitted != accepted + full + invalid_submits ||
        q.dropped_oldest != 0 || q.consumed != (uint64_t)MANUAL_STEPS * BATCH ||
        q.queued != accepted - q.consumed)
        fail("queue statistics disagree with the producers (accepted %llu, rejected_full %llu)",
             (unsigned long long)accepted, (unsigned long long)full);

    /* -- background trainer --------------------------------------------------------------- */
    CHECK(prfl_start(rt, PRFL_STEP_REWARD));
    EXPECT_ERR(prfl_step(rt, PRFL_STEP_REWARD, &st), PRFL_ERR_BUSY);
    EXPECT_ERR(prfl_save(rt, save_path), PRFL_ERR_BUSY);
    submit_clips(rt, text, 3, BACKGROUND_SAMPLES);
    const uint64_t target = q.consumed + ((q.queued + BACKGROUND_SAMPLES) / BATCH) * BATCH;
    const double bg_deadline = now_s() + DEADLINE_S;
    while (queue_stats(rt).consumed < target) {
        if (now_s() > bg_deadline) fail("background trainer did not consume the queue in time");
        sleep_ms(20);
    }
    CHECK(prfl_stop(rt));
    CHECK(prfl_stop(rt)); /* stopping a stopped trainer is harmless */
    print_queue(queue_stats(rt));
    printf("background trainer consumed the queue and stopped\n");

    /* -- scoring -------------------------------------------------------------------------- */
    float clips[2 * LATENT_LEN];
    uint64_t rng = 1234;
    make_clip(&rng, 1, clips);
    make_clip(&rng, 0, clips + LATENT_LEN);
    const float timesteps[2] = {500.0f, 500.0f};
    float texts[2 * TEXT_LEN]; /* prfl_score_batch takes one text per latent */
    memcpy(texts, text, sizeof text);
    memcpy(texts + TEXT_LEN, text, sizeof text);
    float single[2], batch[2];
    for (int i = 0; i < 2; i++)
        CHECK(prfl_score(rt, clips + i * LATENT_LEN, LATENT_LEN, timesteps[i], text, TEXT_LEN, &single[i]));
    CHECK(prfl_score_batch(rt, clips, 2, LATENT_LEN, timesteps, texts, TEXT_LEN, batch));
    printf("scores at t=500: smooth clip %.5f, flickering clip %.5f (batched %.5f, %.5f)\n", single[0], single[1],
           batch[0], batch[1]);
    for (int i = 0; i < 2; i++) {
        if (!isfinite(single[i])) fail("score %d is not finite", i);
        if (!close_enough(single[i], batch[i])) fail("prfl_score_batch differs from prfl_score for clip %d", i);
    }
    EXPECT_ERR(prfl_score(rt, clips, LATENT_LEN, 500.0f, text, TEXT_LEN, NULL), PRFL_ERR_NULL_POINTER);

    /* -- save, reload into a fresh runtime, compare ------------------------------------------ */
    CHECK(prfl_save(rt, save_path));
    const uint64_t steps_saved = queue_stats(rt).consumed / BATCH;
    printf("saved %s after %llu steps\n", save_path, (unsigned long long)steps_saved);

    PrflRuntime *fresh = NULL;
    CHECK(prfl_create(&cfg, &fresh));
    CHECK(prfl_load_generator(fresh, generator));
    EXPECT_ERR(prfl_load(fresh, "/nonexistent/prfl/state"), PRFL_ERR_IO);
    CHECK(prfl_load(fresh, save_path));
    float reloaded[2];
    for (int i = 0; i < 2; i++)
        CHECK(prfl_score(fresh, clips + i * LATENT_LEN, LATENT_LEN, timesteps[i], text, TEXT_LEN, &reloaded[i]));
    printf("reloaded runtime scores: %.5f, %.5f\n", reloaded[0], reloaded[1]);
    for (int i = 0; i < 2; i++)
        if (!close_enough(single[i], reloaded[i])) fail("reloaded score %d: %g vs %g", i, reloaded[i], single[i]);

    /* The reloaded runtime keeps training where the first one stopped. */
    submit_clips(fresh, text, 4, BATCH);
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CHECK(prfl_step(fresh, PRFL_STEP_REWARD, &st));
    print_step("reloaded step", &st);
    if (st.step != steps_saved + 1) fail("reloaded runtime is at step %llu, expected %llu", (unsigned long long)st.step,
                                         (unsigned long long)(steps_saved + 1));

    prfl_destroy(fresh);
    prfl_destroy(rt);
    prfl_destroy(NULL); /* a no-op, like free(NULL) */
    CHECK(prfl_set_log_callback(NULL, NULL, 0));
    printf("c sample: OK\n");
    return 0;
}
