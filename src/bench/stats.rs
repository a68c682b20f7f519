//! Summary statistics and the least-squares fit of time against memory.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct Summary {
    pub count: usize,
    pub min: f64,
    pub median: f64,
    pub mean: f64,
    pub max: f64,
}

pub(crate) fn summarize(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary::default();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    Summary { count: n, min: sorted[0], median, mean: sorted.iter().sum::<f64>() / n as f64, max: sorted[n - 1] }
}

/// y = intercept + slope · x, by ordinary least squares.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub(crate) struct Fit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination; 1 when every point is on the line.
    pub r_squared: f64,
}

pub(crate) fn least_squares(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let total: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    let residual: f64 = points.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
    let r_squared = if total == 0.0 { 1.0 } else { 1.0 - residual / total };
    Some(Fit { slope, intercept, r_squared })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), Summary { count: 3, min: 1.0, median: 2.0, mean: 2.0, max: 3.0 });
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]).median, 2.5);
        assert_eq!(summarize(&[]).count, 0);
    }

    #[test]
    fn fit_recovers_a_line_and_scores_noise() {
        let fit = least_squares(&[(16.0, 0.5), (64.0, 1.1), (256.0, 3.5)]).unwrap();
        assert!((fit.slope - 0.0125).abs() < 1e-9 && (fit.intercept - 0.3).abs() < 1e-9, "{fit:?}");
        assert!((fit.r_squared - 1.0).abs() < 1e-9);
        let noisy = least_squares(&[(1.0, 1.0), (2.0, 3.0), (3.0, 2.0)]).unwrap();
        assert!(noisy.r_squared < 0.5);
        assert!(least_squares(&[(1.0, 1.0)]).is_none());
        assert!(least_squares(&[(1.0, 1.0), (1.0, 2.0)]).is_none(), "one x: no slope");
    }
}
