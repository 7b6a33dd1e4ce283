// The Prfl runtime module: UPrflPreferenceComponent and the engine-independent FPrflCore.
using UnrealBuildTool;

public class Prfl : ModuleRules
{
	public Prfl(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;

		// prfl.hpp reports failures as exceptions. FPrflCore catches every one of them and hands
		// Blueprint-facing code plain results, but the module must be compiled with unwinding
		// enabled for those catch blocks to exist.
		bEnableExceptions = true;

		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine" });
		// "Projects" for IPluginManager (locating prfl.dll on Windows); PrflLibrary brings the
		// headers and the native library.
		PrivateDependencyModuleNames.AddRange(new string[] { "Projects", "PrflLibrary" });
	}
}
