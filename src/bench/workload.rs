//! Who sends the generated events: every player equally (the uniform workload), or a
//! few percent of the players most of them (the skewed one, Zipf), as in a real game.
//!
//! ```text
//! uniform:  player = scramble(i) mod players
//! zipf(s):  player of rank k (1-based) with probability k^-s / Σ j^-s, j = 1..players
//!           drawn by inverse CDF: u = splitmix64(i) in [0, 1) ─► first rank whose CDF > u
//! ```
//!
//! Both are deterministic in the event's index, so a run can be repeated exactly.

/// Distribution of the events over the players.
#[derive(Debug, Clone)]
pub enum Players {
    /// Every player equally likely.
    Uniform { players: usize },
    /// Zipf with this exponent: the player of rank k weighs k^-exponent.
    Zipf {
        players: usize,
        exponent: f64,
        /// Cumulative probability by rank (last = 1).
        cdf: Vec<f64>,
    },
}

impl Players {
    pub fn uniform(players: usize) -> Self {
        Self::Uniform {
            players: players.max(1),
        }
    }

    pub fn zipf(players: usize, exponent: f64) -> Self {
        let players = players.max(1);
        let mut cdf = Vec::with_capacity(players);
        let mut sum = 0.0;
        for rank in 1..=players {
            sum += (rank as f64).powf(-exponent);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Self::Zipf {
            players,
            exponent,
            cdf,
        }
    }

    /// How many distinct players there are.
    pub fn count(&self) -> usize {
        match self {
            Self::Uniform { players } | Self::Zipf { players, .. } => *players,
        }
    }

    /// The Zipf exponent (None: uniform).
    pub fn exponent(&self) -> Option<f64> {
        match self {
            Self::Uniform { .. } => None,
            Self::Zipf { exponent, .. } => Some(*exponent),
        }
    }

    /// The player (0-based) of the `i`-th event, whose scrambled index is `h`.
    pub fn pick(&self, i: usize, h: u64) -> usize {
        match self {
            Self::Uniform { players } => (h >> 16) as usize % players,
            Self::Zipf { cdf, .. } => {
                // 53 random bits: a uniform f64 in [0, 1).
                let u = (splitmix64(i as u64) >> 11) as f64 / (1_u64 << 53) as f64;
                cdf.partition_point(|c| *c <= u).min(cdf.len() - 1)
            }
        }
    }

    /// The share of events that the most active 1% of the players send.
    pub fn top_percent_share(&self) -> f64 {
        match self {
            Self::Uniform { .. } => 0.01,
            Self::Zipf { cdf, .. } => cdf[cdf.len().div_ceil(100) - 1],
        }
    }

    /// For the report: "uniform" or "zipf 1.1".
    pub fn name(&self) -> String {
        match self {
            Self::Uniform { .. } => "uniform".to_owned(),
            Self::Zipf { exponent, .. } => format!("zipf {exponent}"),
        }
    }
}

/// Sebastiano Vigna's SplitMix64 finaliser: consecutive inputs give independent-looking
/// outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_gives_the_most_events_to_a_few_percent_of_the_players() {
        let players = Players::zipf(200_000, 1.1);
        // Analytically: the top 1% (2,000 players) send about 77% of the events.
        let share = players.top_percent_share();
        assert!((0.7..0.85).contains(&share), "{share}");
        // And the drawn events agree with the distribution.
        let n = 200_000;
        let mut counts = vec![0_u32; players.count()];
        for i in 0..n {
            counts[players.pick(i, 0)] += 1;
        }
        let top: u32 = counts[..2000].iter().sum();
        let drawn = f64::from(top) / n as f64;
        assert!((drawn - share).abs() < 0.01, "{drawn} vs {share}");
        assert!(counts[0] > counts[1] && counts[1] > counts[100]);
    }

    #[test]
    fn uniform_keeps_the_historical_assignment() {
        let players = Players::uniform(20_000);
        let h = 12_345_u64.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        assert_eq!(players.pick(12_345, h), (h >> 16) as usize % 20_000);
        assert_eq!(players.top_percent_share(), 0.01);
        assert_eq!(players.name(), "uniform");
        assert_eq!(Players::zipf(10, 1.1).name(), "zipf 1.1");
    }

    #[test]
    fn every_pick_is_a_player() {
        let players = Players::zipf(3, 2.0);
        assert!((0..10_000).all(|i| players.pick(i, 0) < 3));
        assert_eq!(Players::zipf(0, 1.1).count(), 1);
    }
}
