#include "PrflPreferenceComponent.h"

#include "Misc/Paths.h"
#include "PrflCore.h"
#include "PrflModule.h"

#include <string>

namespace
{
std::string ToUtf8(const FString& S)
{
	const FTCHARToUTF8 Converted(*S);
	return std::string(Converted.Get(), Converted.Length());
}

// Content-relative unless already absolute, so projects can ship the generator with their content.
FString ResolveUnder(const FString& Base, const FString& Path)
{
	return FPaths::IsRelative(Path) ? FPaths::ConvertRelativePathToFull(FPaths::Combine(Base, Path)) : Path;
}
}  // namespace

UPrflPreferenceComponent::UPrflPreferenceComponent()
{
	// Training runs on the library's thread; nothing to do per frame.
	PrimaryComponentTick.bCanEverTick = false;
}

void UPrflPreferenceComponent::BeginPlay()
{
	Super::BeginPlay();

	FPrflCoreSettings Settings;
	Settings.GeneratorPath = ToUtf8(ResolveUnder(FPaths::ProjectContentDir(), GeneratorPath));
	Settings.StatePath = ToUtf8(ResolveUnder(FPaths::ProjectSavedDir(), StateFile));
	if (!RewardPath.IsEmpty())
	{
		Settings.RewardPath = ToUtf8(ResolveUnder(FPaths::ProjectContentDir(), RewardPath));
	}
	Settings.bTrainInBackground = bTrainInBackground;
	Settings.Mode = prfl::StepMode::Reward;
	Settings.ScoreTimestep = ScoreTimestep;
	Settings.Config.device(bUseGpu ? prfl::Device::Auto : prfl::Device::Cpu)
		.queue(static_cast<uint32_t>(QueueCapacity), prfl::Backpressure::RejectNewest)
		.latent_shape(static_cast<uint32_t>(LatentChannels), static_cast<uint32_t>(LatentFrames),
			static_cast<uint32_t>(LatentHeight), static_cast<uint32_t>(LatentWidth))
		.text_shape(static_cast<uint32_t>(TextTokens), static_cast<uint32_t>(TextDim))
		.batch_size(static_cast<uint32_t>(BatchSize))
		.reward_loss(bLearnFromPairs ? prfl::RewardLoss::Bt : prfl::RewardLoss::Ce)
		.reward_blocks(static_cast<uint32_t>(RewardBlocks));

	Core = MakeShared<FPrflCore>();
	const FPrflResult Result = Core->Open(Settings);
	if (!Result.Ok())
	{
		// Preference learning is optional: the actor keeps working without it.
		Fail(FString::Printf(TEXT("prfl unavailable: %s"), UTF8_TO_TCHAR(Result.Message.c_str())));
		Core.Reset();
		return;
	}
	UE_LOG(LogPrfl, Log, TEXT("%s: learning preferences (%s)"), *GetNameSafe(GetOwner()),
		bTrainInBackground ? TEXT("background training") : TEXT("manual steps"));
}

void UPrflPreferenceComponent::EndPlay(const EEndPlayReason::Type EndPlayReason)
{
	if (Core.IsValid())
	{
		if (bSaveOnEndPlay)
		{
			SaveState();
		}
		Core->Close();
		Core.Reset();
	}
	Super::EndPlay(EndPlayReason);
}

bool UPrflPreferenceComponent::SubmitRating(const TArray<float>& Latent, const TArray<float>& TextEmbedding, float Label)
{
	if (!IsReady() || !CheckLength(Latent, LatentLength(), TEXT("Latent")) ||
		!CheckLength(TextEmbedding, TextLength(), TEXT("TextEmbedding")))
	{
		return false;
	}
	return Core->SubmitRating(Latent.GetData(), static_cast<size_t>(Latent.Num()), TextEmbedding.GetData(),
		static_cast<size_t>(TextEmbedding.Num()), Label);
}

bool UPrflPreferenceComponent::SubmitStarRating(
	const TArray<float>& Latent, const TArray<float>& TextEmbedding, int32 Stars, int32 MaxStars)
{
	float Label = 0.0f;
	return FPrflCore::LabelFromStars(Stars, MaxStars, Label) && SubmitRating(Latent, TextEmbedding, Label);
}

bool UPrflPreferenceComponent::SubmitPreference(
	const TArray<float>& Preferred, const TArray<float>& Rejected, const TArray<float>& TextEmbedding)
{
	if (!IsReady() || !CheckLength(Preferred, LatentLength(), TEXT("Preferred")) ||
		!CheckLength(Rejected, LatentLength(), TEXT("Rejected")) ||
		!CheckLength(TextEmbedding, TextLength(), TEXT("TextEmbedding")))
	{
		return false;
	}
	return Core->SubmitPreference(Preferred.GetData(), Rejected.GetData(), static_cast<size_t>(Preferred.Num()),
		TextEmbedding.GetData(), static_cast<size_t>(TextEmbedding.Num()));
}

bool UPrflPreferenceComponent::ScoreLatent(const TArray<float>& Latent, const TArray<float>& TextEmbedding, float& OutScore)
{
	OutScore = 0.0f;
	if (!IsReady())
	{
		return Fail(TEXT("prfl is not ready"));
	}
	const FPrflResult Result = Core->Score(Latent.GetData(), static_cast<size_t>(Latent.Num()), TextEmbedding.GetData(),
		static_cast<size_t>(TextEmbedding.Num()), OutScore);
	return Result.Ok() || Fail(UTF8_TO_TCHAR(Result.Message.c_str()));
}

bool UPrflPreferenceComponent::TrainStep(float& OutLoss, float& OutAccuracy)
{
	OutLoss = 0.0f;
	OutAccuracy = 0.0f;
	if (!IsReady())
	{
		return Fail(TEXT("prfl is not ready"));
	}
	prfl::StepStats Stats{};
	const FPrflResult Result = Core->TrainStep(Stats);
	if (Result.Status == prfl::Status::NotEnoughSamples)
	{
		return false;  // not an error: wait for more ratings
	}
	if (!Result.Ok())
	{
		return Fail(UTF8_TO_TCHAR(Result.Message.c_str()));
	}
	OutLoss = Stats.loss;
	OutAccuracy = Stats.accuracy;
	return true;
}

bool UPrflPreferenceComponent::SaveState()
{
	if (!IsReady())
	{
		return Fail(TEXT("prfl is not ready"));
	}
	const FPrflResult Result = Core->Save();
	return Result.Ok() || Fail(UTF8_TO_TCHAR(Result.Message.c_str()));
}

bool UPrflPreferenceComponent::IsReady() const
{
	return Core.IsValid() && Core->IsOpen();
}

int32 UPrflPreferenceComponent::GetQueuedSamples() const
{
	prfl::QueueStats Stats{};
	return IsReady() && Core->QueueStats(Stats).Ok() ? static_cast<int32>(Stats.queued) : 0;
}

int64 UPrflPreferenceComponent::GetDroppedSubmissions() const
{
	return IsReady() ? static_cast<int64>(Core->DroppedSubmissions()) : 0;
}

FString UPrflPreferenceComponent::GetLastError() const
{
	return LastError;
}

bool UPrflPreferenceComponent::Fail(const FString& Message)
{
	LastError = Message;
	UE_LOG(LogPrfl, Warning, TEXT("%s: %s"), *GetNameSafe(GetOwner()), *Message);
	return false;
}

bool UPrflPreferenceComponent::CheckLength(const TArray<float>& Values, int64 Expected, const TCHAR* What)
{
	// Checked here for a Blueprint-friendly message; the library checks again regardless.
	return Values.Num() == Expected ||
		Fail(FString::Printf(TEXT("%s has %d floats, expected %lld"), What, Values.Num(), Expected));
}

int64 UPrflPreferenceComponent::LatentLength() const
{
	return static_cast<int64>(LatentChannels) * LatentFrames * LatentHeight * LatentWidth;
}

int64 UPrflPreferenceComponent::TextLength() const
{
	return static_cast<int64>(TextTokens) * TextDim;
}
