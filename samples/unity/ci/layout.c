/* Prints the C layout of every struct the C# bindings mirror, one "Struct.field offset" line per
 * field plus "Struct size N", compiled against the real prfl.h. SmokeTest.cs compares these with
 * Marshal.OffsetOf/SizeOf, so a field added, reordered or retyped on either side fails CI instead
 * of corrupting memory in a game. */
#include "prfl.h"

#include <stddef.h>
#include <stdio.h>

#define FIELD(S, f) printf(#S "." #f " %zu\n", offsetof(S, f))
#define SIZE(S) printf(#S " size %zu\n", sizeof(S))

int main(void) {
    SIZE(PrflConfig);
    FIELD(PrflConfig, struct_size);
    FIELD(PrflConfig, abi_version);
    FIELD(PrflConfig, device);
    FIELD(PrflConfig, device_index);
    FIELD(PrflConfig, cuda_library_dir);
    FIELD(PrflConfig, queue_capacity);
    FIELD(PrflConfig, backpressure);
    FIELD(PrflConfig, latent_channels);
    FIELD(PrflConfig, latent_frames);
    FIELD(PrflConfig, latent_height);
    FIELD(PrflConfig, latent_width);
    FIELD(PrflConfig, text_len);
    FIELD(PrflConfig, text_dim);
    FIELD(PrflConfig, image_len);
    FIELD(PrflConfig, image_dim);
    FIELD(PrflConfig, batch_size);
    FIELD(PrflConfig, reward_loss);
    FIELD(PrflConfig, reward_blocks);
    FIELD(PrflConfig, reward_backbone_lr);
    FIELD(PrflConfig, reward_head_lr);
    FIELD(PrflConfig, prfl_lr);
    FIELD(PrflConfig, prfl_steps);
    FIELD(PrflConfig, shift);
    FIELD(PrflConfig, lora_rank);
    FIELD(PrflConfig, lora_alpha);
    FIELD(PrflConfig, recompute);
    FIELD(PrflConfig, seed);
    FIELD(PrflConfig, cpu_fallback);

    SIZE(PrflStepStats);
    FIELD(PrflStepStats, struct_size);
    FIELD(PrflStepStats, mode);
    FIELD(PrflStepStats, step);
    FIELD(PrflStepStats, samples);
    FIELD(PrflStepStats, loss);
    FIELD(PrflStepStats, accuracy);
    FIELD(PrflStepStats, reward);
    FIELD(PrflStepStats, grad_norm);
    FIELD(PrflStepStats, skipped_nonfinite);
    FIELD(PrflStepStats, mid_step);
    FIELD(PrflStepStats, seconds);
    FIELD(PrflStepStats, peak_bytes);

    SIZE(PrflQueueStats);
    FIELD(PrflQueueStats, struct_size);
    FIELD(PrflQueueStats, capacity);
    FIELD(PrflQueueStats, queued);
    FIELD(PrflQueueStats, submitted);
    FIELD(PrflQueueStats, accepted);
    FIELD(PrflQueueStats, rejected_full);
    FIELD(PrflQueueStats, rejected_invalid);
    FIELD(PrflQueueStats, dropped_oldest);
    FIELD(PrflQueueStats, consumed);

    SIZE(PrflSampleConfig);
    FIELD(PrflSampleConfig, struct_size);
    FIELD(PrflSampleConfig, steps);
    FIELD(PrflSampleConfig, shift);
    FIELD(PrflSampleConfig, solver);
    FIELD(PrflSampleConfig, reject_at_step);
    FIELD(PrflSampleConfig, keep);

    SIZE(PrflSampleStats);
    FIELD(PrflSampleStats, struct_size);
    FIELD(PrflSampleStats, reject_timestep);
    FIELD(PrflSampleStats, generator_evals);
    FIELD(PrflSampleStats, reward_evals);
    FIELD(PrflSampleStats, full_generator_evals);
    FIELD(PrflSampleStats, reward_cost);
    FIELD(PrflSampleStats, saved_fraction);
    FIELD(PrflSampleStats, seconds);
    return 0;
}
