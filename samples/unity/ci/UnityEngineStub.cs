// The few UnityEngine types PrflPreferenceLearner.cs uses, so CI can compile it with
// -define:UNITY_5_3_OR_NEWER and no Unity install (a type-check only; nothing runs). Not for use
// in a Unity project.
using System;

namespace UnityEngine
{
    public class Object { }
    public class Component : Object { }
    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour { }

    public static class Debug
    {
        public static void Log(object message) { Console.WriteLine(message); }
        public static void LogWarning(object message) { Console.WriteLine(message); }
        public static void LogError(object message) { Console.Error.WriteLine(message); }
    }

    public static class Application
    {
        public static string streamingAssetsPath { get { return "StreamingAssets"; } }
        public static string persistentDataPath { get { return "PersistentData"; } }
    }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class HeaderAttribute : Attribute { public HeaderAttribute(string header) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }
}

namespace AOT
{
    // Unity ships this attribute; Prfl.cs only defines it outside Unity.
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MonoPInvokeCallbackAttribute : Attribute { public MonoPInvokeCallbackAttribute(Type type) { } }
}
