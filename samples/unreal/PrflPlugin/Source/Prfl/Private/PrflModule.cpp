#include "PrflModule.h"

#include "Interfaces/IPluginManager.h"
#include "Misc/Paths.h"
#include "Modules/ModuleManager.h"

#include "prfl.hpp"

DEFINE_LOG_CATEGORY(LogPrfl);

void FPrflModule::StartupModule()
{
#if PLATFORM_WINDOWS
	// prfl.dll is delay-loaded and sits next to this module in the plugin's Binaries folder, which
	// is not on the DLL search path: load it by full path before the first prfl_* call.
	const TSharedPtr<IPlugin> Plugin = IPluginManager::Get().FindPlugin(TEXT("PrflPlugin"));
	if (Plugin.IsValid())
	{
		const FString DllPath = FPaths::Combine(Plugin->GetBaseDir(), TEXT("Binaries/Win64/prfl.dll"));
		LibraryHandle = FPlatformProcess::GetDllHandle(*DllPath);
	}
	if (LibraryHandle == nullptr)
	{
		UE_LOG(LogPrfl, Error, TEXT("Could not load prfl.dll; preference learning is unavailable"));
		return;
	}
#endif
	if (prfl::abi_version() != PRFL_ABI_VERSION)
	{
		UE_LOG(LogPrfl, Error, TEXT("prfl library ABI %u does not match the plugin's headers (%d)"), prfl::abi_version(),
			PRFL_ABI_VERSION);
		return;
	}
	try
	{
		// Called on library threads too; UE_LOG is thread-safe.
		prfl::set_log_callback(
			[](prfl::LogLevel Level, const char* Message)
			{
				const FString Text = UTF8_TO_TCHAR(Message);
				if (Level <= prfl::LogLevel::Error)
				{
					UE_LOG(LogPrfl, Error, TEXT("%s"), *Text);
				}
				else if (Level == prfl::LogLevel::Warn)
				{
					UE_LOG(LogPrfl, Warning, TEXT("%s"), *Text);
				}
				else
				{
					UE_LOG(LogPrfl, Log, TEXT("%s"), *Text);
				}
			},
			prfl::LogLevel::Info);
	}
	catch (const prfl::Error& E)
	{
		UE_LOG(LogPrfl, Warning, TEXT("prfl log callback not installed: %s"), UTF8_TO_TCHAR(E.what()));
	}
	UE_LOG(LogPrfl, Log, TEXT("prfl %s loaded"), UTF8_TO_TCHAR(prfl::version().c_str()));
}

void FPrflModule::ShutdownModule()
{
#if PLATFORM_WINDOWS
	if (LibraryHandle == nullptr)
	{
		return;
	}
#endif
	try
	{
		// The library must not call into this module's code after it is unloaded.
		prfl::clear_log_callback();
	}
	catch (const prfl::Error&)
	{
	}
#if PLATFORM_WINDOWS
	FPlatformProcess::FreeDllHandle(LibraryHandle);
	LibraryHandle = nullptr;
#endif
}

IMPLEMENT_MODULE(FPrflModule, Prfl)
