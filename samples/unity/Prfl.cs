// Prfl.cs: C# bindings for the prfl C ABI (include/prfl.h), for Unity (Mono and IL2CPP) and
// plain Mono/.NET.
//
// - PrflNative: the raw P/Invoke declarations, one per C function, blittable signatures only.
// - PrflRuntime: an IDisposable wrapper that throws PrflException on failure; TrySubmit* return
//   false on a full queue instead, because producers run every frame and a full queue is normal.
// - PrflLog: the process-wide log callback as a C# event.
//
// Strings cross the boundary as NUL-terminated UTF-8 byte arrays that we encode ourselves: the
// default string marshalling is the ANSI code page on Windows .NET, which mangles non-ASCII
// paths (artists' home folders often have them), and the UTF-8 marshalling helpers are not in
// every Unity profile.

using System;
using System.Runtime.InteropServices;
using System.Text;
using AOT;

#if !UNITY_5_3_OR_NEWER
namespace AOT
{
    // Unity's IL2CPP needs this attribute on every static method handed to native code as a
    // callback. Unity ships it (AOT.MonoPInvokeCallbackAttribute); elsewhere we define the same
    // name so the bindings compile unchanged.
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MonoPInvokeCallbackAttribute : Attribute
    {
        public MonoPInvokeCallbackAttribute(Type type) { Type = type; }
        public Type Type { get; private set; }
    }
}
#endif

namespace Prfl
{
    public enum PrflStatus : int
    {
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
    }

    public enum PrflDevice : int { Cpu = 0, Cuda = 1, Auto = 2 }
    public enum PrflBackpressure : int { RejectNewest = 0, DropOldest = 1 }
    public enum PrflStepMode : int { Reward = 0, Prfl = 1 }
    public enum PrflRewardLoss : int { Ce = 0, Bt = 1 }
    public enum PrflSolver : int { UniPc = 0, Euler = 1 }
    // Numbered like Rust's `log` crate: lower is more severe.
    public enum PrflLogLevel : int { Off = 0, Error = 1, Warn = 2, Info = 3, Debug = 4, Trace = 5 }

    // Field for field the C struct, in order: Sequential layout with natural alignment gives the
    // C offsets on every 32- and 64-bit ABI (the pointer is an IntPtr so it follows the platform).
    // samples/run.sh checks every offset against the compiled header.
    [StructLayout(LayoutKind.Sequential)]
    public struct PrflConfig
    {
        public uint StructSize;
        public uint AbiVersion;
        public PrflDevice Device;
        public int DeviceIndex;
        // const char* (UTF-8), owned by the caller: PrflRuntime's constructor manages it.
        public IntPtr CudaLibraryDir;
        public uint QueueCapacity;
        public PrflBackpressure Backpressure;
        public uint LatentChannels;
        public uint LatentFrames;
        public uint LatentHeight;
        public uint LatentWidth;
        public uint TextLen;
        public uint TextDim;
        public uint ImageLen;
        public uint ImageDim;
        public uint BatchSize;
        public PrflRewardLoss RewardLoss;
        public uint RewardBlocks;
        public float RewardBackboneLr;
        public float RewardHeadLr;
        public float PrflLr;
        public uint PrflSteps;
        public float Shift;
        public uint LoraRank;
        public float LoraAlpha;
        public uint Recompute;
        public ulong Seed;
        // 1: run on the CPU when PRFL_DEVICE_CUDA cannot be used (instead of failing).
        public int CpuFallback;

        // The library's defaults (prfl_config_default), with the size and ABI version filled in.
        public static PrflConfig Default()
        {
            PrflConfig c;
            PrflNative.prfl_config_default(out c);
            return c;
        }

        // Floats in one sample's latent / text / image tensors under this configuration.
        public int LatentLength { get { return checked((int)(LatentChannels * LatentFrames * LatentHeight * LatentWidth)); } }
        public int TextLength { get { return checked((int)(TextLen * TextDim)); } }
        public int ImageLength { get { return checked((int)(ImageLen * ImageDim)); } }
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PrflStepStats
    {
        public uint StructSize;
        public PrflStepMode Mode;
        public ulong Step;
        public uint Samples;
        public float Loss;
        public float Accuracy;
        public float Reward;
        public float GradNorm;
        public uint SkippedNonfinite;
        public uint MidStep;
        public double Seconds;
        public ulong PeakBytes;

        public override string ToString()
        {
            return string.Format("step {0} ({1}) samples {2} loss {3:F4} accuracy {4:F2} reward {5:F4} grad_norm {6:F4} {7:F3}s",
                Step, Mode, Samples, Loss, Accuracy, Reward, GradNorm, Seconds);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PrflQueueStats
    {
        public uint StructSize;
        public uint Capacity;
        public uint Queued;
        public ulong Submitted;
        public ulong Accepted;
        public ulong RejectedFull;
        public ulong RejectedInvalid;
        public ulong DroppedOldest;
        public ulong Consumed;

        public override string ToString()
        {
            return string.Format("queued {0}/{1} submitted {2} accepted {3} rejected_full {4} rejected_invalid {5} dropped {6} consumed {7}",
                Queued, Capacity, Submitted, Accepted, RejectedFull, RejectedInvalid, DroppedOldest, Consumed);
        }
    }

    // How PrflRuntime.SampleEarlyReject samples; every field 0 = its default (see prfl.h).
    [StructLayout(LayoutKind.Sequential)]
    public struct PrflSampleConfig
    {
        public uint StructSize;
        public uint Steps;
        public float Shift;
        public PrflSolver Solver;
        public uint RejectAtStep;
        public uint Keep;

        // Every field its default, with the size filled in (prfl_sample_config_default).
        public static PrflSampleConfig Default()
        {
            PrflSampleConfig c;
            PrflNative.prfl_sample_config_default(out c);
            return c;
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PrflSampleStats
    {
        public uint StructSize;
        public float RejectTimestep;
        public ulong GeneratorEvals;
        public ulong RewardEvals;
        public ulong FullGeneratorEvals;
        public double RewardCost;
        public double SavedFraction;
        public double Seconds;

        public override string ToString()
        {
            return string.Format("rejected at t={0} generator_evals {1}/{2} reward_evals {3} saved {4:P0} {5:F3}s",
                RejectTimestep, GeneratorEvals, FullGeneratorEvals, RewardEvals, SavedFraction, Seconds);
        }
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate void PrflLogCallback(IntPtr user, int level, IntPtr message);

    // Raw entry points. Arrays of float are blittable, so the marshaller pins them instead of
    // copying; the IntPtr overloads take pointers from NativeArray/unsafe code without a copy.
    public static class PrflNative
    {
#if (UNITY_IOS || UNITY_WEBGL) && !UNITY_EDITOR
        // Statically linked into the player (libprfl.a): symbols live in the main executable.
        public const string Library = "__Internal";
#else
        // Resolved as libprfl.so / libprfl.dylib / prfl.dll (Unity: Assets/Plugins/<platform>/).
        public const string Library = "prfl";
#endif

        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern uint prfl_abi_version();
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern IntPtr prfl_version();
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern void prfl_config_default(out PrflConfig config);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_create(ref PrflConfig config, out PrflRuntimeHandle runtime);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern void prfl_destroy(IntPtr runtime);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_load_generator(PrflRuntimeHandle runtime, byte[] pathUtf8);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_load_generator_from_memory(PrflRuntimeHandle runtime, byte[] safetensors,
            UIntPtr len, byte[] configJsonUtf8);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_init_reward(PrflRuntimeHandle runtime);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_load_reward(PrflRuntimeHandle runtime, byte[] pathUtf8);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_submit_labeled(PrflRuntimeHandle runtime, float[] latent, UIntPtr latentLen,
            float[] text, UIntPtr textLen, float[] image, UIntPtr imageLen, float label);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl, EntryPoint = "prfl_submit_labeled")]
        public static extern PrflStatus prfl_submit_labeled_ptr(PrflRuntimeHandle runtime, IntPtr latent, UIntPtr latentLen,
            IntPtr text, UIntPtr textLen, IntPtr image, UIntPtr imageLen, float label);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_submit_pair(PrflRuntimeHandle runtime, float[] win, float[] lose, UIntPtr latentLen,
            float[] text, UIntPtr textLen, float[] image, UIntPtr imageLen);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl, EntryPoint = "prfl_submit_pair")]
        public static extern PrflStatus prfl_submit_pair_ptr(PrflRuntimeHandle runtime, IntPtr win, IntPtr lose, UIntPtr latentLen,
            IntPtr text, UIntPtr textLen, IntPtr image, UIntPtr imageLen);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_step(PrflRuntimeHandle runtime, PrflStepMode mode, ref PrflStepStats stats);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_score(PrflRuntimeHandle runtime, float[] latent, UIntPtr latentLen, float timestep,
            float[] text, UIntPtr textLen, out float score);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_score_batch(PrflRuntimeHandle runtime, float[] latents, UIntPtr count, UIntPtr latentLen,
            float[] timesteps, float[] text, UIntPtr textLen, [Out] float[] scores);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_select_candidates(PrflRuntimeHandle runtime, float[] latents, UIntPtr count,
            UIntPtr latentLen, float timestep, float[] text, UIntPtr textLen, UIntPtr keep, uint[] outKept, float[] outScores);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern void prfl_sample_config_default(out PrflSampleConfig config);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_sample_early_reject(PrflRuntimeHandle runtime, float[] noise, UIntPtr count,
            UIntPtr latentLen, float[] text, UIntPtr textLen, ref PrflSampleConfig config, float[] outLatents, uint[] outKept,
            ref PrflSampleStats stats);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_start(PrflRuntimeHandle runtime, PrflStepMode mode);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_stop(PrflRuntimeHandle runtime);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_save(PrflRuntimeHandle runtime, byte[] pathUtf8);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_load(PrflRuntimeHandle runtime, byte[] pathUtf8);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_queue_stats(PrflRuntimeHandle runtime, ref PrflQueueStats stats);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern PrflStatus prfl_set_log_callback(PrflLogCallback callback, IntPtr user, int maxLevel);
        [DllImport(Library, CallingConvention = CallingConvention.Cdecl)]
        public static extern IntPtr prfl_last_error();

        // NUL-terminated UTF-8 (null stays null, which the library reports as NullPointer).
        public static byte[] Utf8(string s)
        {
            if (s == null) return null;
            var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        // A C string the library owns (static or thread-local), copied into a managed string.
        public static string FromUtf8(IntPtr p)
        {
            if (p == IntPtr.Zero) return string.Empty;
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0) n++;
            var bytes = new byte[n];
            Marshal.Copy(p, bytes, 0, n);
            return Encoding.UTF8.GetString(bytes);
        }

        // The calling thread's last error message.
        public static string LastError() { return FromUtf8(prfl_last_error()); }
    }

    // Owns a PrflRuntime*. SafeHandle guarantees prfl_destroy runs exactly once, even from the
    // finalizer when a script forgets Dispose, and never while a P/Invoke on it is in flight.
    public sealed class PrflRuntimeHandle : SafeHandle
    {
        public PrflRuntimeHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle()
        {
            PrflNative.prfl_destroy(handle);
            return true;
        }
    }

    public class PrflException : Exception
    {
        public PrflStatus Status { get; private set; }
        public string Function { get; private set; }
        public string Detail { get; private set; }

        public PrflException(PrflStatus status, string function, string detail)
            : base(Compose(status, function, detail))
        {
            Status = status;
            Function = function;
            Detail = detail;
        }

        // The library's messages already start with the function's name; ours get it prepended.
        private static string Compose(PrflStatus status, string function, string detail)
        {
            if (string.IsNullOrEmpty(detail)) return function + ": " + status;
            return (detail.StartsWith(function + ":", StringComparison.Ordinal) ? detail : function + ": " + detail)
                + " (" + status + ")";
        }

        // Reads prfl_last_error() at once: it is per thread and the next call overwrites it.
        internal static void ThrowIfFailed(PrflStatus status, string function)
        {
            if (status != PrflStatus.Ok) throw new PrflException(status, function, PrflNative.LastError());
        }
    }

    // The library's single, process-wide log callback as a C# event. Messages arrive on library
    // threads (producers, the background trainer): handlers must be thread-safe (Unity's
    // Debug.Log is).
    public static class PrflLog
    {
        public static event Action<PrflLogLevel, string> Message;

        // Held in a static field so the GC never collects the delegate native code calls.
        private static readonly PrflLogCallback Callback = OnMessage;

        public static void Enable(PrflLogLevel maxLevel)
        {
            PrflException.ThrowIfFailed(PrflNative.prfl_set_log_callback(Callback, IntPtr.Zero, (int)maxLevel),
                "prfl_set_log_callback");
        }

        public static void Disable()
        {
            PrflException.ThrowIfFailed(PrflNative.prfl_set_log_callback(null, IntPtr.Zero, 0), "prfl_set_log_callback");
        }

        // Static with the attribute because IL2CPP can only call back into static methods.
        [MonoPInvokeCallback(typeof(PrflLogCallback))]
        private static void OnMessage(IntPtr user, int level, IntPtr message)
        {
            // An exception must not unwind into native frames: swallow handler failures.
            try
            {
                var handler = Message;
                if (handler != null) handler((PrflLogLevel)level, PrflNative.FromUtf8(message));
            }
            catch (Exception)
            {
            }
        }
    }

    // A runtime: configure, load, submit from any thread, train and score from one thread.
    public sealed class PrflRuntime : IDisposable
    {
        private readonly PrflRuntimeHandle handle;
        public PrflConfig Config { get; private set; }

        public static uint AbiVersion { get { return PrflNative.prfl_abi_version(); } }
        public static string Version { get { return PrflNative.FromUtf8(PrflNative.prfl_version()); } }
        // The ABI these bindings were written for (PRFL_ABI_VERSION).
        public const uint BindingsAbiVersion = 1;

        public PrflRuntime(PrflConfig config, string cudaLibraryDir = null)
        {
            if (AbiVersion != BindingsAbiVersion)
                throw new PrflException(PrflStatus.Version, "prfl_abi_version",
                    "library ABI " + AbiVersion + ", bindings ABI " + BindingsAbiVersion);
            config.StructSize = (uint)Marshal.SizeOf(typeof(PrflConfig));
            config.AbiVersion = BindingsAbiVersion;
            // The library copies the string during prfl_create, so it only has to outlive the call.
            IntPtr dir = IntPtr.Zero;
            try
            {
                if (!string.IsNullOrEmpty(cudaLibraryDir))
                {
                    byte[] bytes = PrflNative.Utf8(cudaLibraryDir);
                    dir = Marshal.AllocHGlobal(bytes.Length);
                    Marshal.Copy(bytes, 0, dir, bytes.Length);
                }
                config.CudaLibraryDir = dir;
                PrflRuntimeHandle h;
                PrflStatus s = PrflNative.prfl_create(ref config, out h);
                if (s != PrflStatus.Ok)
                {
                    string detail = PrflNative.LastError();
                    h.Dispose();
                    throw new PrflException(s, "prfl_create", detail);
                }
                handle = h;
            }
            finally
            {
                if (dir != IntPtr.Zero) Marshal.FreeHGlobal(dir);
            }
            config.CudaLibraryDir = IntPtr.Zero;
            Config = config;
        }

        public PrflRuntimeHandle Handle { get { return handle; } }

        // Stops the background trainer (inside prfl_destroy) and frees the runtime.
        public void Dispose() { handle.Dispose(); }

        public void LoadGenerator(string path)
        {
            PrflException.ThrowIfFailed(PrflNative.prfl_load_generator(handle, PrflNative.Utf8(path)), "prfl_load_generator");
        }

        // One safetensors file's bytes (e.g. a TextAsset or an Addressables download) and its config.json.
        public void LoadGeneratorFromMemory(byte[] safetensors, string configJson)
        {
            if (safetensors == null) throw new ArgumentNullException("safetensors");
            PrflException.ThrowIfFailed(PrflNative.prfl_load_generator_from_memory(handle, safetensors,
                (UIntPtr)safetensors.Length, PrflNative.Utf8(configJson)), "prfl_load_generator_from_memory");
        }

        public void InitReward() { PrflException.ThrowIfFailed(PrflNative.prfl_init_reward(handle), "prfl_init_reward"); }

        public void LoadReward(string path)
        {
            PrflException.ThrowIfFailed(PrflNative.prfl_load_reward(handle, PrflNative.Utf8(path)), "prfl_load_reward");
        }

        // --- producers: thread-safe, never block ------------------------------------------

        // True when queued; false when the queue is full (Backpressure.RejectNewest): drop the
        // sample or retry later. Other failures (wrong lengths, NaN, ...) are bugs and throw.
        public bool TrySubmitLabeled(float[] latent, float[] text, float label, float[] image = null)
        {
            return Accepted(PrflNative.prfl_submit_labeled(handle, latent, Len(latent), text, Len(text), image, Len(image), label),
                "prfl_submit_labeled");
        }

        public bool TrySubmitPair(float[] win, float[] lose, float[] text, float[] image = null)
        {
            CheckPair(win, lose);
            return Accepted(PrflNative.prfl_submit_pair(handle, win, lose, Len(win), text, Len(text), image, Len(image)),
                "prfl_submit_pair");
        }

        // Pointer variants for NativeArray<float> (NativeArrayUnsafeUtility.GetUnsafeReadOnlyPtr) and
        // unsafe buffers; lengths count floats.
        public bool TrySubmitLabeled(IntPtr latent, int latentLen, IntPtr text, int textLen, float label,
            IntPtr image = default(IntPtr), int imageLen = 0)
        {
            return Accepted(PrflNative.prfl_submit_labeled_ptr(handle, latent, (UIntPtr)latentLen, text, (UIntPtr)textLen,
                image, (UIntPtr)imageLen, label), "prfl_submit_labeled");
        }

        public bool TrySubmitPair(IntPtr win, IntPtr lose, int latentLen, IntPtr text, int textLen,
            IntPtr image = default(IntPtr), int imageLen = 0)
        {
            return Accepted(PrflNative.prfl_submit_pair_ptr(handle, win, lose, (UIntPtr)latentLen, text, (UIntPtr)textLen,
                image, (UIntPtr)imageLen), "prfl_submit_pair");
        }

        // --- training (control thread) ----------------------------------------------------

        public PrflStepStats Step(PrflStepMode mode)
        {
            PrflStepStats stats;
            PrflException.ThrowIfFailed(StepStatus(mode, out stats), "prfl_step");
            return stats;
        }

        // False when there is nothing to do yet (NotEnoughSamples) or the background trainer owns
        // the runtime (Busy); other failures throw.
        public bool TryStep(PrflStepMode mode, out PrflStepStats stats)
        {
            PrflStatus s = StepStatus(mode, out stats);
            if (s == PrflStatus.NotEnoughSamples || s == PrflStatus.Busy) return false;
            PrflException.ThrowIfFailed(s, "prfl_step");
            return true;
        }

        public void Start(PrflStepMode mode) { PrflException.ThrowIfFailed(PrflNative.prfl_start(handle, mode), "prfl_start"); }
        public void Stop() { PrflException.ThrowIfFailed(PrflNative.prfl_stop(handle), "prfl_stop"); }

        // --- scoring ----------------------------------------------------------------------

        // Reward of a latent at a noise timestep in [0, 1000] (0 = clean): the probability in (0, 1)
        // that it is to the raters' taste.
        public float Score(float[] latent, float timestep, float[] text)
        {
            float score;
            PrflException.ThrowIfFailed(PrflNative.prfl_score(handle, latent, Len(latent), timestep, text, Len(text), out score),
                "prfl_score");
            return score;
        }

        // timesteps.Length samples, each with its own latent and text states, back to back in
        // `latents` and `texts` (repeat the text for candidates of one prompt).
        public float[] ScoreBatch(float[] latents, float[] timesteps, float[] texts)
        {
            if (latents == null || timesteps == null || texts == null)
                throw new ArgumentNullException(latents == null ? "latents" : timesteps == null ? "timesteps" : "texts");
            int count = timesteps.Length;
            if (count == 0) return new float[0];
            // The C call takes per-sample lengths.
            if (latents.Length % count != 0 || texts.Length % count != 0)
                throw new PrflException(PrflStatus.Shape, "prfl_score_batch",
                    latents.Length + " latent and " + texts.Length + " text floats do not split into " + count + " samples");
            var scores = new float[count];
            PrflException.ThrowIfFailed(PrflNative.prfl_score_batch(handle, latents, (UIntPtr)count,
                (UIntPtr)(latents.Length / count), timesteps, texts, (UIntPtr)(texts.Length / count), scores), "prfl_score_batch");
            return scores;
        }

        // --- early rejection --------------------------------------------------------------

        // For a host running its own sampler: scores `count` candidates (latents and one text
        // each, back to back) at the sampler's current timestep and returns the indices of the
        // best `keep`, best first (ties: the lower index first).
        public uint[] SelectCandidates(float[] latents, int count, float timestep, float[] texts, int keep, float[] scores = null)
        {
            if (latents == null || texts == null) throw new ArgumentNullException(latents == null ? "latents" : "texts");
            if (count <= 0 || latents.Length % count != 0 || texts.Length % count != 0)
                throw new PrflException(PrflStatus.Shape, "prfl_select_candidates",
                    latents.Length + " latent and " + texts.Length + " text floats do not split into " + count + " candidates");
            if (scores != null && scores.Length < count)
                throw new ArgumentException("scores holds fewer than count values", "scores");
            var kept = new uint[Math.Max(keep, 0)];
            PrflException.ThrowIfFailed(PrflNative.prfl_select_candidates(handle, latents, (UIntPtr)count,
                (UIntPtr)(latents.Length / count), timestep, texts, (UIntPtr)(texts.Length / count), (UIntPtr)Math.Max(keep, 0),
                kept, scores), "prfl_select_candidates");
            return kept;
        }

        // Lets the library sample `count` candidates from `noise` (standard normal, back to back)
        // under one text each, score them part-way and finish only the best config.Keep (all of
        // them when Keep == count). Returns the survivors' latents; `kept` gets their candidate
        // indices (ascending), `stats` the cost.
        public float[] SampleEarlyReject(float[] noise, int count, float[] texts, PrflSampleConfig config,
            out uint[] kept, out PrflSampleStats stats)
        {
            if (noise == null || texts == null) throw new ArgumentNullException(noise == null ? "noise" : "texts");
            if (count <= 0 || noise.Length % count != 0 || texts.Length % count != 0)
                throw new PrflException(PrflStatus.Shape, "prfl_sample_early_reject",
                    noise.Length + " noise and " + texts.Length + " text floats do not split into " + count + " candidates");
            int keep = config.Keep != 0 ? (int)config.Keep : Math.Max(count / 4, 1);
            if (keep > count)
                throw new PrflException(PrflStatus.InvalidArgument, "prfl_sample_early_reject",
                    "config keep is " + keep + ": between 1 and count (" + count + ")");
            int latentLen = noise.Length / count;
            var latents = new float[keep * latentLen];
            kept = new uint[keep];
            stats = new PrflSampleStats { StructSize = (uint)Marshal.SizeOf(typeof(PrflSampleStats)) };
            PrflException.ThrowIfFailed(PrflNative.prfl_sample_early_reject(handle, noise, (UIntPtr)count, (UIntPtr)latentLen,
                texts, (UIntPtr)(texts.Length / count), ref config, latents, kept, ref stats), "prfl_sample_early_reject");
            return latents;
        }

        // --- persistence and monitoring ---------------------------------------------------

        public void Save(string path) { PrflException.ThrowIfFailed(PrflNative.prfl_save(handle, PrflNative.Utf8(path)), "prfl_save"); }
        public void Load(string path) { PrflException.ThrowIfFailed(PrflNative.prfl_load(handle, PrflNative.Utf8(path)), "prfl_load"); }

        public PrflQueueStats QueueStats()
        {
            var stats = new PrflQueueStats { StructSize = (uint)Marshal.SizeOf(typeof(PrflQueueStats)) };
            PrflException.ThrowIfFailed(PrflNative.prfl_queue_stats(handle, ref stats), "prfl_queue_stats");
            return stats;
        }

        private PrflStatus StepStatus(PrflStepMode mode, out PrflStepStats stats)
        {
            stats = new PrflStepStats { StructSize = (uint)Marshal.SizeOf(typeof(PrflStepStats)) };
            return PrflNative.prfl_step(handle, mode, ref stats);
        }

        private static UIntPtr Len(float[] a) { return (UIntPtr)(a == null ? 0 : a.Length); }

        private static void CheckPair(float[] win, float[] lose)
        {
            // The C call takes one length for both: never let it read past the shorter array.
            if (win != null && lose != null && win.Length != lose.Length)
                throw new PrflException(PrflStatus.Shape, "prfl_submit_pair",
                    "win has " + win.Length + " floats, lose " + lose.Length);
        }

        private static bool Accepted(PrflStatus s, string function)
        {
            if (s == PrflStatus.QueueFull) return false;
            PrflException.ThrowIfFailed(s, function);
            return true;
        }
    }
}
