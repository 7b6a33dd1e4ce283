// UPrflPreferenceComponent: learns what an artist likes from their ratings of generated clips and
// scores new candidates, from Blueprints or C++.
//
// Latents are flattened float arrays in [C, F, H, W] order (LatentChannels x LatentFrames x
// LatentHeight x LatentWidth floats); text embeddings are [TextTokens, TextDim] (the generator's
// text-encoder states for the clip's prompt). Ratings are queued without blocking the game
// thread and trained on a library thread; scores are probabilities in (0, 1) that a clip is liked.
#pragma once

#include "Components/ActorComponent.h"
#include "CoreMinimal.h"

#include "PrflPreferenceComponent.generated.h"

class FPrflCore;

UCLASS(ClassGroup = (AI), meta = (BlueprintSpawnableComponent))
class PRFL_API UPrflPreferenceComponent : public UActorComponent
{
	GENERATED_BODY()

public:
	UPrflPreferenceComponent();

	/** Wan2.1 checkpoint (directory or .safetensors): absolute, or relative to the project's Content folder. */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Model")
	FString GeneratorPath = TEXT("Prfl/Generator");

	/** Learnt state, relative to the project's Saved folder: resumed at BeginPlay when present, written by SaveState. */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Model")
	FString StateFile = TEXT("Prfl/Preferences.prfl");

	/** Optional reward checkpoint trained offline (prfl train-reward), used when there is no saved state. */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Model")
	FString RewardPath;

	/** Use a CUDA GPU when one is available (otherwise the CPU). */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Model")
	bool bUseGpu = true;

	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Shapes", meta = (ClampMin = "1"))
	int32 LatentChannels = 16;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Shapes", meta = (ClampMin = "1"))
	int32 LatentFrames = 21;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Shapes", meta = (ClampMin = "2"))
	int32 LatentHeight = 60;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Shapes", meta = (ClampMin = "2"))
	int32 LatentWidth = 104;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Shapes", meta = (ClampMin = "1"))
	int32 TextTokens = 512;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Shapes", meta = (ClampMin = "1"))
	int32 TextDim = 4096;

	/** Learn from A-vs-B choices (SubmitPreference, Bradley-Terry) instead of ratings (SubmitRating). */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training")
	bool bLearnFromPairs = false;
	/** Train on a library thread whenever a batch is queued; otherwise call TrainStep. */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training")
	bool bTrainInBackground = true;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training", meta = (ClampMin = "1"))
	int32 BatchSize = 8;
	/** Ratings waiting for the trainer; when full, new ones are dropped (and counted) rather than stalling the game.
	 *  Every slot is allocated up front for two latents and a text (about 25 MB at 480p, 81 frames): keep it small. */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training", meta = (ClampMin = "1"))
	int32 QueueCapacity = 16;
	/** Generator blocks the reward model reads (its backbone depth). */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training", meta = (ClampMin = "1"))
	int32 RewardBlocks = 8;
	/** Noise timestep in [0, 1000] at which latents are scored (0 = clean latents). */
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training", meta = (ClampMin = "0", ClampMax = "1000"))
	float ScoreTimestep = 0.0f;
	UPROPERTY(EditAnywhere, BlueprintReadOnly, Category = "Prfl|Training")
	bool bSaveOnEndPlay = true;

	/** Queues a clip the artist rated: Label 1 = good, 0 = bad (no other values; needs bLearnFromPairs off). False if dropped or invalid. */
	UFUNCTION(BlueprintCallable, Category = "Prfl")
	bool SubmitRating(const TArray<float>& Latent, const TArray<float>& TextEmbedding, float Label);

	/** Queues a clip rated with 1..MaxStars stars: the top half counts as good, the bottom half as bad; a middle rating carries no preference and is not queued (returns false). */
	UFUNCTION(BlueprintCallable, Category = "Prfl")
	bool SubmitStarRating(const TArray<float>& Latent, const TArray<float>& TextEmbedding, int32 Stars, int32 MaxStars = 5);

	/** Queues an A-vs-B choice between two clips of the same prompt (needs bLearnFromPairs). */
	UFUNCTION(BlueprintCallable, Category = "Prfl")
	bool SubmitPreference(const TArray<float>& Preferred, const TArray<float>& Rejected, const TArray<float>& TextEmbedding);

	/** Probability in (0, 1) that a latent is to the artist's taste. False (see GetLastError) on failure. */
	UFUNCTION(BlueprintCallable, Category = "Prfl")
	bool ScoreLatent(const TArray<float>& Latent, const TArray<float>& TextEmbedding, float& OutScore);

	/** One training step when not training in background. False while not enough ratings are queued. */
	UFUNCTION(BlueprintCallable, Category = "Prfl")
	bool TrainStep(float& OutLoss, float& OutAccuracy);

	/** Writes what was learnt to StateFile (training pauses for the save). */
	UFUNCTION(BlueprintCallable, Category = "Prfl")
	bool SaveState();

	UFUNCTION(BlueprintPure, Category = "Prfl")
	bool IsReady() const;

	UFUNCTION(BlueprintPure, Category = "Prfl")
	int32 GetQueuedSamples() const;

	/** Ratings dropped because the queue was full (the trainer is behind). */
	UFUNCTION(BlueprintPure, Category = "Prfl")
	int64 GetDroppedSubmissions() const;

	UFUNCTION(BlueprintPure, Category = "Prfl")
	FString GetLastError() const;

protected:
	virtual void BeginPlay() override;
	virtual void EndPlay(const EEndPlayReason::Type EndPlayReason) override;

private:
	bool Fail(const FString& Message);
	bool CheckLength(const TArray<float>& Values, int64 Expected, const TCHAR* What);
	int64 LatentLength() const;
	int64 TextLength() const;

	// Shared (not unique) so this header needs no definition of FPrflCore: UHT-generated code
	// destroys the component where only the forward declaration is visible.
	TSharedPtr<FPrflCore> Core;
	FString LastError;
};
