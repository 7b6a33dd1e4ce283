// A Unity component that learns an artist's preferences while they work: gameplay or tool code
// calls Rate/Prefer with the latents of clips the artist judged, a background trainer updates the
// reward model, and Score ranks new candidates (e.g. to pick which generated variations to show).
//
// Setup: put libprfl (Assets/Plugins/<platform>/), Prfl.cs and this file in the project, the
// generator checkpoint under StreamingAssets, add the component to a GameObject, and set the
// shapes to those of your latents and text-encoder states.
#if UNITY_5_3_OR_NEWER
using System;
using System.IO;
using Prfl;
using UnityEngine;

public sealed class PrflPreferenceLearner : MonoBehaviour
{
    [Header("Model")]
    [Tooltip("Wan2.1 checkpoint directory, relative to StreamingAssets.")]
    public string generatorPath = "prfl/generator";
    [Tooltip("Saved runtime to resume from (persistentDataPath-relative); a fresh reward head when missing.")]
    public string statePath = "prfl/preferences.prfl";
    public PrflDevice device = PrflDevice.Auto;

    [Header("Shapes (floats per sample are their products)")]
    public int latentChannels = 16, latentFrames = 21, latentHeight = 60, latentWidth = 104;
    public int textTokens = 512, textDim = 4096;

    [Header("Training")]
    public PrflRewardLoss loss = PrflRewardLoss.Bt;
    public int rewardBlocks = 8;
    public int batchSize = 8;
    [Tooltip("Samples waiting for the trainer. Every slot is allocated up front for two latents and a text " +
             "(about 25 MB at 480p, 81 frames), so keep it small: a rating that finds the queue full is dropped.")]
    public int queueCapacity = 16;
    [Tooltip("Noise timestep in [0, 1000] at which Score judges latents (0 = clean).")]
    public float scoreTimestep = 0f;

    [Header("Diagnostics")]
    public PrflLogLevel logLevel = PrflLogLevel.Warn;

    PrflRuntime runtime;
    long dropped;

    public bool IsReady { get { return runtime != null; } }
    // Samples refused because the queue was full (the trainer is behind); they are not retried.
    public long DroppedSamples { get { return System.Threading.Interlocked.Read(ref dropped); } }

    string StateFile { get { return Path.Combine(Application.persistentDataPath, statePath); } }

    void Awake()
    {
        PrflLog.Message += OnPrflLog;
        try
        {
            PrflLog.Enable(logLevel);
            PrflConfig cfg = PrflConfig.Default();
            cfg.Device = device;
            cfg.QueueCapacity = (uint)queueCapacity;
            // A game would rather lose a rating than stall a frame.
            cfg.Backpressure = PrflBackpressure.RejectNewest;
            cfg.LatentChannels = (uint)latentChannels;
            cfg.LatentFrames = (uint)latentFrames;
            cfg.LatentHeight = (uint)latentHeight;
            cfg.LatentWidth = (uint)latentWidth;
            cfg.TextLen = (uint)textTokens;
            cfg.TextDim = (uint)textDim;
            cfg.RewardLoss = loss;
            cfg.RewardBlocks = (uint)rewardBlocks;
            cfg.BatchSize = (uint)batchSize;

            runtime = new PrflRuntime(cfg);
            runtime.LoadGenerator(Path.Combine(Application.streamingAssetsPath, generatorPath));
            if (File.Exists(StateFile) || Directory.Exists(StateFile)) runtime.Load(StateFile);
            else runtime.InitReward();
            runtime.Start(PrflStepMode.Reward);
        }
        catch (Exception e)
        {
            // Preference learning is an optional feature: report and carry on without it.
            Debug.LogError("PrflPreferenceLearner disabled: " + e.Message);
            if (runtime != null) runtime.Dispose();
            runtime = null;
            enabled = false;
        }
    }

    // The artist rated one clip: 1 = good, 0 = bad (no other values). Needs loss = Ce.
    public bool Rate(float[] latent, float[] text, float label)
    {
        if (runtime == null) return false;
        if (runtime.TrySubmitLabeled(latent, text, label)) return true;
        System.Threading.Interlocked.Increment(ref dropped);
        return false;
    }

    // The artist preferred `win` over `lose` (same prompt). Needs loss = Bt.
    public bool Prefer(float[] win, float[] lose, float[] text)
    {
        if (runtime == null) return false;
        if (runtime.TrySubmitPair(win, lose, text)) return true;
        System.Threading.Interlocked.Increment(ref dropped);
        return false;
    }

    // Probability in (0, 1) that the clip is to the artist's taste; NaN when the learner is unavailable.
    public float Score(float[] latent, float[] text)
    {
        return runtime == null ? float.NaN : runtime.Score(latent, scoreTimestep, text);
    }

    public PrflQueueStats QueueStats() { return runtime == null ? default(PrflQueueStats) : runtime.QueueStats(); }

    // Persists what was learnt; the background trainer pauses for the save (save needs it idle).
    public void Save()
    {
        if (runtime == null) return;
        runtime.Stop();
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(StateFile));
            runtime.Save(StateFile);
        }
        finally
        {
            runtime.Start(PrflStepMode.Reward);
        }
    }

    void OnApplicationQuit() { Save(); }

    void OnDestroy()
    {
        if (runtime != null)
        {
            runtime.Dispose();  // stops the trainer, frees native memory
            runtime = null;
        }
        PrflLog.Message -= OnPrflLog;
    }

    // Called on library threads; Debug.Log is thread-safe.
    static void OnPrflLog(PrflLogLevel level, string message)
    {
        if (level <= PrflLogLevel.Error) Debug.LogError("[prfl] " + message);
        else if (level == PrflLogLevel.Warn) Debug.LogWarning("[prfl] " + message);
        else Debug.Log("[prfl] " + message);
    }
}
#endif
