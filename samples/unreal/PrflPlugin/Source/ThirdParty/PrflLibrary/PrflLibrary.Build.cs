// The prebuilt prfl library as an external module. Stage it with samples/unreal/stage_plugin.sh,
// which fills:
//   include/prfl.h, include/prfl.hpp         (include/ and bindings/cpp/ of the prfl repository)
//   lib/Win64/prfl.dll, lib/Win64/prfl.dll.lib   (the import library: cargo's with the MSVC target;
//                                                for a mingw-built prfl.dll, made from prfl.def)
//   lib/Linux/libprfl.so.1, lib/Linux/libprfl.so -> libprfl.so.1   (SONAME: the ABI major version)
//   lib/Mac/libprfl.dylib
// The shared library is used rather than libprfl.a: it keeps Rust's runtime and allocator out of
// the engine's link and lets tools swap a CUDA-enabled build in without relinking.
using System.IO;
using UnrealBuildTool;

public class PrflLibrary : ModuleRules
{
	public PrflLibrary(ReadOnlyTargetRules Target) : base(Target)
	{
		Type = ModuleType.External;
		PublicSystemIncludePaths.Add(Path.Combine(ModuleDirectory, "include"));

		string LibDir = Path.Combine(ModuleDirectory, "lib", Target.Platform.ToString());
		if (Target.Platform == UnrealTargetPlatform.Win64)
		{
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "prfl.dll.lib"));
			// Loaded explicitly by FPrflModule::StartupModule from the plugin's Binaries folder.
			PublicDelayLoadDLLs.Add("prfl.dll");
			RuntimeDependencies.Add("$(BinaryOutputDir)/prfl.dll", Path.Combine(LibDir, "prfl.dll"));
		}
		else if (Target.Platform == UnrealTargetPlatform.Linux)
		{
			// libprfl.so (a symlink) is what the linker reads; the module then asks the loader for
			// the library's SONAME, libprfl.so.<ABI major>, which is what ships.
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "libprfl.so"));
			RuntimeDependencies.Add("$(BinaryOutputDir)/libprfl.so.1", Path.Combine(LibDir, "libprfl.so.1"));
		}
		else if (Target.Platform == UnrealTargetPlatform.Mac)
		{
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "libprfl.dylib"));
			RuntimeDependencies.Add("$(BinaryOutputDir)/libprfl.dylib", Path.Combine(LibDir, "libprfl.dylib"));
		}
		PublicDefinitions.Add("WITH_PRFL=1");
	}
}
