//! Pushes: new image versions travel to the sites' relays at night, inside each site's
//! transfer windows and under its bandwidth cap.
//!
//! - [`window`]: daily windows in a site's time zone (pure).
//! - [`rate`]: rate parsing and the token bucket shared by a relay's connections (pure core).
//! - [`clock`]: the scheduler's clock, injectable for tests.
pub mod clock;
pub mod rate;
pub mod window;
