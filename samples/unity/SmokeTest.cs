// Console smoke test of Prfl.cs, run by samples/run.sh under Mono (not part of a Unity project:
// Unity defines UNITY_5_3_OR_NEWER, which compiles this file to nothing).
//
// usage: mono SmokeTest.exe GENERATOR_DIR WORK_DIR [LAYOUT_FILE]
//   LAYOUT_FILE  output of samples/unity/ci/layout.c: the C offsets and sizes of the structs,
//                compared field by field with the C# declarations.
#if !UNITY_5_3_OR_NEWER
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Threading;
using Prfl;

public static class SmokeTest
{
    // The fixture model's inputs: latent [16,3,4,4], text [7 tokens, 24].
    const uint C = 16, F = 3, H = 4, W = 4, Tokens = 7, TextDim = 24, Batch = 4;
    const int PerProducer = 6, Steps = 3;
    static readonly TimeSpan Deadline = TimeSpan.FromSeconds(120);

    public static int Main(string[] args)
    {
        if (args.Length < 2)
        {
            Console.Error.WriteLine("usage: mono SmokeTest.exe GENERATOR_DIR WORK_DIR [LAYOUT_FILE]");
            return 2;
        }
        try
        {
            Run(args[0], args[1], args.Length > 2 ? args[2] : null);
            Console.WriteLine("unity smoke test: OK");
            return 0;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine("unity smoke test: FAILED: " + e);
            return 1;
        }
    }

    static void Expect(bool ok, string what)
    {
        if (!ok) throw new Exception("check failed: " + what);
    }

    static void ExpectError(PrflStatus want, string what, Action action)
    {
        try
        {
            action();
        }
        catch (PrflException e)
        {
            Expect(e.Status == want, what + ": got " + e.Message);
            Console.WriteLine("  expected error: " + e.Message);
            return;
        }
        throw new Exception(what + ": did not throw");
    }

    // "Struct.snake_name offset" -> Marshal.OffsetOf(typeof(Struct), "PascalName").
    static void CheckLayout(string path)
    {
        var types = new Dictionary<string, Type>
        {
            { "PrflConfig", typeof(PrflConfig) },
            { "PrflStepStats", typeof(PrflStepStats) },
            { "PrflQueueStats", typeof(PrflQueueStats) },
            { "PrflSampleConfig", typeof(PrflSampleConfig) },
            { "PrflSampleStats", typeof(PrflSampleStats) },
        };
        int checkedFields = 0, checkedSizes = 0;
        foreach (string line in File.ReadAllLines(path))
        {
            string[] parts = line.Split(' ');
            if (parts.Length == 3 && parts[1] == "size")
            {
                int size = Marshal.SizeOf(types[parts[0]]);
                Expect(size == int.Parse(parts[2]), parts[0] + " is " + parts[2] + " bytes in C, " + size + " in C#");
                checkedSizes++;
                continue;
            }
            string[] name = parts[0].Split('.');
            string field = Pascal(name[1]);
            int offset = Marshal.OffsetOf(types[name[0]], field).ToInt32();
            Expect(offset == int.Parse(parts[1]),
                name[0] + "." + field + " is at " + offset + " in C#, " + parts[1] + " in C");
            checkedFields++;
        }
        Expect(checkedSizes == types.Count, "layout file checks " + checkedSizes + " of " + types.Count + " structs");
        Console.WriteLine("layout: " + checkedFields + " field offsets and " + checkedSizes + " sizes match prfl.h");
    }

    static string Pascal(string snake)
    {
        var parts = snake.Split('_');
        for (int i = 0; i < parts.Length; i++) parts[i] = char.ToUpperInvariant(parts[i][0]) + parts[i].Substring(1);
        return string.Join("", parts);
    }

    // Smooth clips are "good", flickering ones "bad" (as in samples/c/main.c).
    static float[] Clip(Random rng, bool good)
    {
        var v = new float[C * F * H * W];
        for (int c = 0; c < C; c++)
        {
            double phase = (rng.NextDouble() * 2 - 1) * Math.PI;
            for (int f = 0; f < F; f++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++)
                        v[((c * F + f) * H + y) * W + x] = (float)(Math.Sin(phase + 0.7 * x + 0.5 * y + (good ? 0.3 : 2.5) * f)
                            + (good ? 0.05 : 0.6) * (rng.NextDouble() * 2 - 1));
        }
        return v;
    }

    static float[] Text(int seed)
    {
        var rng = new Random(seed);
        var t = new float[Tokens * TextDim];
        for (int i = 0; i < t.Length; i++) t[i] = (float)(rng.NextDouble() - 0.5);
        return t;
    }

    static bool Close(float a, float b) { return Math.Abs(a - b) <= 1e-5f * (1 + Math.Abs(a)); }

    static PrflConfig Config()
    {
        PrflConfig cfg = PrflConfig.Default();
        Expect(cfg.StructSize == (uint)Marshal.SizeOf(typeof(PrflConfig)),
            "prfl_config_default's struct_size " + cfg.StructSize + " equals Marshal.SizeOf(PrflConfig)");
        cfg.Device = PrflDevice.Cpu;
        cfg.QueueCapacity = 5;
        cfg.Backpressure = PrflBackpressure.RejectNewest;
        cfg.LatentChannels = C;
        cfg.LatentFrames = F;
        cfg.LatentHeight = H;
        cfg.LatentWidth = W;
        cfg.TextLen = Tokens;
        cfg.TextDim = TextDim;
        cfg.ImageLen = 0;
        cfg.ImageDim = 0;
        cfg.BatchSize = Batch;
        cfg.RewardLoss = PrflRewardLoss.Ce;
        cfg.RewardBlocks = 2;
        cfg.RewardHeadLr = 1e-3f;
        cfg.Seed = 3;
        return cfg;
    }

    static void Run(string generator, string workDir, string layoutFile)
    {
        Console.WriteLine("prfl " + PrflRuntime.Version + ", ABI " + PrflRuntime.AbiVersion);
        if (layoutFile != null) CheckLayout(layoutFile);

        int logLines = 0;
        PrflLog.Message += (level, message) =>
        {
            Interlocked.Increment(ref logLines);
            if (level <= PrflLogLevel.Warn) Console.Error.WriteLine("  [prfl " + level + "] " + message);
        };
        PrflLog.Enable(PrflLogLevel.Info);

        PrflConfig cfg = Config();
        float[] text = Text(1);
        var probeRng = new Random(5);
        float[] good = Clip(probeRng, true), bad = Clip(probeRng, false);
        string savePath = Path.Combine(workDir, "unity_smoke.prfl");
        float goodScore, badScore;

        using (var rt = new PrflRuntime(cfg))
        {
            ExpectError(PrflStatus.NotLoaded, "score before loading", () => rt.Score(good, 500f, text));
            rt.LoadGenerator(generator);
            rt.InitReward();
            Console.WriteLine("loaded " + generator + ", fresh reward head");
            ExpectError(PrflStatus.Shape, "short latent", () => rt.TrySubmitLabeled(new float[5], text, 1f));
            ExpectError(PrflStatus.Shape, "mismatched pair", () => rt.TrySubmitPair(good, new float[5], text));

            // Two producer threads (e.g. a rating UI and an automated capture) against one trainer.
            int accepted = 0, full = 0;
            Exception producerError = null;
            var threads = new Thread[2];
            for (int p = 0; p < 2; p++)
            {
                int seed = 10 + p;
                threads[p] = new Thread(() =>
                {
                    try
                    {
                        var rng = new Random(seed);
                        for (int i = 0; i < PerProducer; i++)
                        {
                            bool isGood = i % 2 == 0;
                            float[] clip = Clip(rng, isGood);
                            DateTime deadline = DateTime.UtcNow + Deadline;
                            while (!rt.TrySubmitLabeled(clip, text, isGood ? 1f : 0f))
                            {
                                Interlocked.Increment(ref full);
                                if (DateTime.UtcNow > deadline) throw new Exception("queue stayed full");
                                Thread.Sleep(1);
                            }
                            Interlocked.Increment(ref accepted);
                        }
                    }
                    catch (Exception e)
                    {
                        producerError = e;
                    }
                });
                threads[p].Start();
            }
            DateTime stepDeadline = DateTime.UtcNow + Deadline;
            for (int done = 0; done < Steps;)
            {
                PrflStepStats stats;
                if (!rt.TryStep(PrflStepMode.Reward, out stats))
                {
                    Expect(DateTime.UtcNow < stepDeadline, "a batch arrives in time");
                    Thread.Sleep(1);
                    continue;
                }
                Console.WriteLine("  reward " + stats);
                Expect(!float.IsNaN(stats.Loss) && stats.Mode == PrflStepMode.Reward, "step stats are sane");
                done++;
            }
            foreach (var t in threads) t.Join();
            if (producerError != null) throw producerError;
            PrflQueueStats q = rt.QueueStats();
            Console.WriteLine("  queue: " + q);
            Expect(q.Accepted == (ulong)accepted && q.RejectedFull == (ulong)full, "queue statistics agree with the producers");

            // The background trainer takes the remaining samples; the control thread only waits.
            rt.Start(PrflStepMode.Reward);
            ExpectError(PrflStatus.Busy, "step while the background trainer runs", () => rt.Step(PrflStepMode.Reward));
            ulong target = q.Consumed + (q.Queued / Batch) * Batch;
            DateTime bgDeadline = DateTime.UtcNow + Deadline;
            while (rt.QueueStats().Consumed < target)
            {
                Expect(DateTime.UtcNow < bgDeadline, "background trainer consumes the queue in time");
                Thread.Sleep(10);
            }
            rt.Stop();

            goodScore = rt.Score(good, 500f, text);
            badScore = rt.Score(bad, 500f, text);
            var both = new float[good.Length * 2];
            good.CopyTo(both, 0);
            bad.CopyTo(both, good.Length);
            var texts = new float[text.Length * 2];  // one text per latent
            text.CopyTo(texts, 0);
            text.CopyTo(texts, text.Length);
            float[] batch = rt.ScoreBatch(both, new[] { 500f, 500f }, texts);
            Console.WriteLine(string.Format("scores at t=500: smooth {0:F5}, flickering {1:F5} (batched {2:F5}, {3:F5})",
                goodScore, badScore, batch[0], batch[1]));
            Expect(Close(goodScore, batch[0]) && Close(badScore, batch[1]), "ScoreBatch matches Score");

            // Early rejection: the host's sampler picks with SelectCandidates; the library's samples
            // 4 candidates, scores them after 2 of 5 steps and finishes 2.
            var scores = new float[2];
            uint[] best = rt.SelectCandidates(both, 2, 500f, texts, 1, scores);
            Expect(best.Length == 1 && best[0] == (scores[1] > scores[0] ? 1u : 0u) && Close(scores[0], batch[0]),
                "SelectCandidates keeps the best score");
            var noiseRng = new System.Random(9);
            var noise = new float[4 * good.Length];
            for (int i = 0; i < noise.Length; i++)  // Box-Muller: standard normal noise
                noise[i] = (float)(Math.Sqrt(-2.0 * Math.Log(1.0 - noiseRng.NextDouble())) * Math.Cos(2.0 * Math.PI * noiseRng.NextDouble()));
            var candTexts = new float[4 * text.Length];
            for (int i = 0; i < 4; i++) text.CopyTo(candTexts, i * text.Length);
            var sc = PrflSampleConfig.Default();
            sc.Steps = 5;
            sc.RejectAtStep = 2;
            sc.Keep = 2;
            uint[] kept;
            PrflSampleStats sstats;
            float[] survivors = rt.SampleEarlyReject(noise, 4, candTexts, sc, out kept, out sstats);
            Console.WriteLine("early rejection: kept " + kept[0] + " and " + kept[1] + " of 4, " + sstats);
            Expect(kept.Length == 2 && kept[0] < kept[1] && survivors.Length == 2 * good.Length && sstats.SavedFraction > 0,
                "SampleEarlyReject finishes the survivors and saves compute");
            rt.Save(savePath);
            Console.WriteLine("saved " + savePath);
        }

        using (var fresh = new PrflRuntime(cfg))
        {
            fresh.LoadGenerator(generator);
            ExpectError(PrflStatus.Io, "load a missing file", () => fresh.Load(Path.Combine(workDir, "missing.prfl")));
            fresh.Load(savePath);
            float g = fresh.Score(good, 500f, text), b = fresh.Score(bad, 500f, text);
            Console.WriteLine(string.Format("reloaded scores: {0:F5}, {1:F5}", g, b));
            Expect(Close(goodScore, g) && Close(badScore, b), "reloaded runtime scores the same");
        }

        // A runtime nobody disposes is released by the SafeHandle's finalizer.
        new PrflRuntime(cfg);
        GC.Collect();
        GC.WaitForPendingFinalizers();

        PrflLog.Disable();
        Console.WriteLine("log callback received " + logLines + " messages");
    }
}
#endif
