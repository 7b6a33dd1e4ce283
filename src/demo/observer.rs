//! How the demo reports progress without knowing where it is shown: the command-line tool draws
//! progress bars, the test stays silent.

/// Receives the demo's progress. Phases do not nest: every [`Observer::phase`] is followed by
/// its ticks and one [`Observer::finish`].
pub trait Observer {
    /// A long phase begins; `total` units of work follow.
    fn phase(&mut self, name: &str, total: u64);
    /// One unit of the current phase is done; `msg` describes where it stands.
    fn tick(&mut self, msg: &str);
    /// The current phase is over.
    fn finish(&mut self);
    /// A line of results worth showing as they come (a phase's outcome).
    fn note(&mut self, line: &str);
}

/// Shows nothing.
pub struct Silent;

impl Observer for Silent {
    fn phase(&mut self, _: &str, _: u64) {}
    fn tick(&mut self, _: &str) {}
    fn finish(&mut self) {}
    fn note(&mut self, _: &str) {}
}
