//! Evaluation metrics of the latent reward model (method.md section 3): accuracy and ROC AUC of
//! scores against 0/1 labels, and pairwise accuracy on preference pairs.
//!
//! Scores are probabilities (`sigmoid(logit)`); labels are 0.0 or 1.0, as in the dataset. Results
//! are f64 so that averages over large evaluation sets do not lose precision.

/// A score at or above this counts as a "good" prediction.
pub const THRESHOLD: f32 = 0.5;

/// Fraction of samples whose prediction `score >= 0.5` matches the label (label >= 0.5 counts as
/// positive). NaN for empty input, since there is nothing to be accurate about.
///
/// # Panics
/// If `scores` and `labels` differ in length.
pub fn accuracy(scores: &[f32], labels: &[f32]) -> f64 {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|(&s, &l)| (s >= THRESHOLD) == (l >= 0.5))
        .count();
    correct as f64 / scores.len() as f64
}

/// Fraction of pairs ranked correctly, `score_win > score_lose`. A tie counts as wrong: a model
/// that scores both clips alike has not expressed the preference. NaN for empty input.
///
/// # Panics
/// If the slices differ in length.
pub fn pairwise_accuracy(win_scores: &[f32], lose_scores: &[f32]) -> f64 {
    assert_eq!(win_scores.len(), lose_scores.len(), "one lose per win");
    let correct = win_scores
        .iter()
        .zip(lose_scores)
        .filter(|(w, l)| w > l)
        .count();
    correct as f64 / win_scores.len() as f64
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (the Mann-Whitney statistic from average ranks; equal to
/// sklearn's `roc_auc_score`).
///
/// `None` when only one class is present (the AUC is undefined) or any score is NaN (it has no
/// rank).
///
/// # Panics
/// If `scores` and `labels` differ in length.
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let positives = labels.iter().filter(|&&l| l >= 0.5).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the 1-based ranks of the positives, each tie group sharing its average rank.
    let mut positive_rank_sum = 0.0f64;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = order[start..end]
            .iter()
            .filter(|&&i| labels[i] >= 0.5)
            .count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_thresholds_at_one_half() {
        // Predictions [0, 1, 1, 0] against labels [0, 1, 0, 0]: three of four right.
        assert_eq!(accuracy(&[0.2, 0.5, 0.7, 0.4], &[0.0, 1.0, 0.0, 0.0]), 0.75);
        assert_eq!(accuracy(&[0.9, 0.1], &[1.0, 0.0]), 1.0);
        assert!(accuracy(&[], &[]).is_nan());
    }

    #[test]
    fn pairwise_accuracy_counts_ties_as_wrong() {
        let acc = pairwise_accuracy(&[0.9, 0.5, 0.3], &[0.1, 0.5, 0.4]);
        assert!((acc - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auc_without_ties() {
        // sklearn's documented example: 3 of the 4 positive/negative pairs are ordered.
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.2], &[0.0, 1.0]), Some(1.0));
        assert_eq!(roc_auc(&[0.1, 0.2], &[1.0, 0.0]), Some(0.0));
    }

    #[test]
    fn auc_ties_get_half_credit() {
        // Positives 0.6 and 0.9 against negatives 0.2 and 0.6: pairs score 1, 0.5, 1, 1.
        let auc = roc_auc(&[0.2, 0.6, 0.6, 0.9], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((auc - 0.875).abs() < 1e-12);
        // A constant scorer is at chance.
        let auc = roc_auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]).unwrap();
        assert!((auc - 0.5).abs() < 1e-12);
        // Ties within one class change nothing: positives {0.7, 0.7}, negatives {0.3, 0.7}.
        let auc = roc_auc(&[0.7, 0.7, 0.3, 0.7], &[1.0, 1.0, 0.0, 0.0]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
    }

    #[test]
    fn auc_undefined_for_one_class_or_nan() {
        assert_eq!(roc_auc(&[0.1, 0.9], &[1.0, 1.0]), None);
        assert_eq!(roc_auc(&[0.1, 0.9], &[0.0, 0.0]), None);
        assert_eq!(roc_auc(&[], &[]), None);
        assert_eq!(roc_auc(&[f32::NAN, 0.9], &[0.0, 1.0]), None);
    }
}
