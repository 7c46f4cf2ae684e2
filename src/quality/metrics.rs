//! Agreement metrics between predicted and human marks.
//!
//! Pure functions over paired slices (`pred[i]` and `gold[i]` grade the same answer). Promises:
//! no panics on short or constant input; a metric that is undefined for the input (fewer than
//! two pairs, zero variance) is `None`, never NaN.

/// Pearson correlation coefficient.
pub fn pearson(pred: &[f64], gold: &[f64]) -> Option<f64> {
    let n = pred.len().min(gold.len());
    if n < 2 {
        return None;
    }
    let mp = pred[..n].iter().sum::<f64>() / n as f64;
    let mg = gold[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (p, g) in pred.iter().zip(gold) {
        sxy += (p - mp) * (g - mg);
        sxx += (p - mp).powi(2);
        syy += (g - mg).powi(2);
    }
    // A constant series has no correlation; relative threshold so float noise is not variance.
    if sxx <= 1e-12 * (1.0 + mp * mp) * n as f64 || syy <= 1e-12 * (1.0 + mg * mg) * n as f64 {
        return None;
    }
    Some(sxy / (sxx.sqrt() * syy.sqrt()))
}

/// Ranks starting at 1; tied values share the average of their ranks.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) hold ranks i+1..=j+1; their mean is (i+j)/2 + 1.
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation (Pearson on average ranks, so ties are handled).
pub fn spearman(pred: &[f64], gold: &[f64]) -> Option<f64> {
    let n = pred.len().min(gold.len());
    pearson(&average_ranks(&pred[..n]), &average_ranks(&gold[..n]))
}

/// Root mean squared error.
pub fn rmse(pred: &[f64], gold: &[f64]) -> Option<f64> {
    let n = pred.len().min(gold.len());
    (n > 0).then(|| {
        (pred
            .iter()
            .zip(gold)
            .map(|(p, g)| (p - g).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt()
    })
}

/// Mean absolute error.
pub fn mae(pred: &[f64], gold: &[f64]) -> Option<f64> {
    let n = pred.len().min(gold.len());
    (n > 0).then(|| {
        pred.iter()
            .zip(gold)
            .map(|(p, g)| (p - g).abs())
            .sum::<f64>()
            / n as f64
    })
}

/// Round a mark to an integer category in `0..=max` (half away from zero, like `f64::round`).
fn category(x: f64, max: usize) -> usize {
    if x.is_finite() {
        x.round().clamp(0.0, max as f64) as usize
    } else {
        0
    }
}

/// Quadratic weighted kappa on marks rounded to integers `0..=max_marks` (the dataset scale).
pub fn qwk(pred: &[f64], gold: &[f64], max_marks: f64) -> Option<f64> {
    let n = pred.len().min(gold.len());
    if n == 0 {
        return None;
    }
    let k = max_marks.round().max(1.0) as usize + 1;
    let mut obs = vec![vec![0.0f64; k]; k];
    let (mut hp, mut hg) = (vec![0.0f64; k], vec![0.0f64; k]);
    for (p, g) in pred.iter().zip(gold) {
        let (a, b) = (category(*p, k - 1), category(*g, k - 1));
        obs[a][b] += 1.0;
        hp[a] += 1.0;
        hg[b] += 1.0;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = ((i as f64 - j as f64) / (k - 1) as f64).powi(2);
            num += w * obs[i][j];
            den += w * hp[i] * hg[j] / n as f64;
        }
    }
    // Both raters constant on the same category: kappa is undefined.
    (den > 0.0).then(|| 1.0 - num / den)
}

/// Share of answers whose integer-rounded marks are equal.
pub fn exact_agreement(pred: &[f64], gold: &[f64], max_marks: f64) -> Option<f64> {
    agreement_within(pred, gold, max_marks, 0)
}

/// Share of answers whose integer-rounded marks differ by at most one mark.
pub fn within_one(pred: &[f64], gold: &[f64], max_marks: f64) -> Option<f64> {
    agreement_within(pred, gold, max_marks, 1)
}

fn agreement_within(pred: &[f64], gold: &[f64], max_marks: f64, tol: usize) -> Option<f64> {
    let n = pred.len().min(gold.len());
    let m = max_marks.round().max(1.0) as usize;
    (n > 0).then(|| {
        pred.iter()
            .zip(gold)
            .filter(|(p, g)| category(**p, m).abs_diff(category(**g, m)) <= tol)
            .count() as f64
            / n as f64
    })
}

/// Accuracy for two-class data (marks 0/1, predictions thresholded at 0.5).
pub fn accuracy(pred: &[f64], gold: &[f64]) -> Option<f64> {
    exact_agreement(pred, gold, 1.0)
}

/// Macro-averaged F1 over the two classes (0 and 1) of two-class data; predictions and gold are
/// thresholded at 0.5. A class with no predictions and no gold members is left out of the mean.
pub fn macro_f1(pred: &[f64], gold: &[f64]) -> Option<f64> {
    let n = pred.len().min(gold.len());
    if n == 0 {
        return None;
    }
    let mut f1s = Vec::new();
    for class in [0usize, 1] {
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (p, g) in pred.iter().zip(gold) {
            let (p, g) = (category(*p, 1) == class, category(*g, 1) == class);
            match (p, g) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                _ => {}
            }
        }
        if tp + fp + fn_ > 0.0 {
            f1s.push(2.0 * tp / (2.0 * tp + fp + fn_));
        }
    }
    (!f1s.is_empty()).then(|| f1s.iter().sum::<f64>() / f1s.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("defined");
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    // Expected values below were worked out by hand and checked once with Python:
    // scipy.stats.pearsonr / spearmanr, sklearn.metrics.cohen_kappa_score(weights="quadratic"),
    // sklearn.metrics.f1_score(average="macro").
    const P: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 5.0];
    const G: [f64; 5] = [2.0, 1.0, 4.0, 3.0, 5.0];

    #[test]
    fn pearson_and_spearman() {
        // Means 3 and 3; sum of products of deviations = 2+2+0+0+4 = 8; both variances sum 10.
        close(pearson(&P, &G), 0.8);
        // No ties, ranks equal the values, so Spearman = Pearson here.
        close(spearman(&P, &G), 0.8);
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(pearson(&[1.0], &[1.0]), None);
    }

    #[test]
    fn spearman_with_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 30.0]),
            vec![1.0, 2.5, 2.5, 4.0]
        );
        // ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]: deviations (-1.5, 0, 0, 1.5) and
        // (-1.5, -.5, .5, 1.5): cov 4.5, var 4.5 and 5 -> 4.5 / sqrt(22.5) = 0.9486832980505138
        // (scipy.stats.spearmanr([10,20,20,30],[1,2,3,4]) agrees).
        close(
            spearman(&[10.0, 20.0, 20.0, 30.0], &[1.0, 2.0, 3.0, 4.0]),
            0.9486832980505138,
        );
    }

    #[test]
    fn errors() {
        // Squared errors 1,1,1,1,0 -> mean 0.8; absolute errors same.
        close(rmse(&P, &G), 0.8f64.sqrt());
        close(mae(&P, &G), 0.8);
        close(rmse(&[0.0, 0.0], &[3.0, 4.0]), 12.5f64.sqrt());
        close(mae(&[0.0, 0.0], &[3.0, 4.0]), 3.5);
        assert_eq!(rmse(&[], &[]), None);
    }

    #[test]
    fn quadratic_weighted_kappa() {
        // Scale 0..=5 (6 categories, weights (i-j)^2/25). Observed: four pairs one apart
        // -> sum w*O = 4/25. Expected: both marginals are one each of 1..5, so
        // E = sum_{i,j in 1..5} (i-j)^2/25 / 5 = 100/25/5 = 0.8. kappa = 1 - 0.16/0.8 = 0.8.
        // sklearn cohen_kappa_score(P, G, weights="quadratic", labels=range(6)) = 0.8.
        close(qwk(&P, &G, 5.0), 0.8);
        close(qwk(&[0.0, 1.0, 2.0], &[0.0, 1.0, 2.0], 2.0), 1.0);
        // pred [0,0,1,1], gold [0,1,0,1] on 0..=1: O off-diagonal 2, E off-diagonal 2*2*2/4=2 -> 0.
        close(qwk(&[0.0, 0.0, 1.0, 1.0], &[0.0, 1.0, 0.0, 1.0], 1.0), 0.0);
        // Rounding: 2.4 -> 2, 2.6 -> 3.
        close(qwk(&[0.4, 2.6, 2.4], &[0.0, 3.0, 2.0], 3.0), 1.0);
        assert_eq!(qwk(&[1.0, 1.0], &[1.0, 1.0], 3.0), None);
    }

    #[test]
    fn agreement() {
        // |P-G| = 1,1,1,1,0 -> exact 1/5, within one 5/5.
        close(exact_agreement(&P, &G, 5.0), 0.2);
        close(within_one(&P, &G, 5.0), 1.0);
        close(within_one(&[0.0, 5.0], &[2.0, 5.0], 5.0), 0.5);
    }

    #[test]
    fn two_class() {
        let pred = [1.0, 1.0, 0.0, 0.0, 1.0, 0.2];
        let gold = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        // Thresholded pred = 1,1,0,0,1,0: correct at 0,2,4,5 -> 4/6.
        close(accuracy(&pred, &gold), 4.0 / 6.0);
        // class 1: tp 2, fp 1, fn 1 -> F1 = 4/6; class 0: tp 2, fp 1, fn 1 -> 4/6; macro 2/3.
        // sklearn f1_score([1,0,0,1,1,0],[1,1,0,0,1,0], average="macro") = 0.6666...
        close(macro_f1(&pred, &gold), 2.0 / 3.0);
        // Only class 1 present anywhere: class 0 is left out, F1(1) = 1.
        close(macro_f1(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
    }
}
