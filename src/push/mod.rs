//! Pushes: new image versions travel to the sites' relays at night, inside each site's
//! transfer windows and under its bandwidth cap.
//!
//! - [`window`]: daily windows in a site's time zone (pure).
//! - [`plan`]: creating pushes (versions, sites) and running recurring ones (`--every`).
//! - [`status`]: a push's status per site (ETA over windows, deadline warning).
//! - [`clock`]: the scheduler's clock, injectable for tests.
pub mod clock;
pub mod plan;
pub mod status;
pub mod window;
