//! Pushes: new image versions travel to the sites' relays at night, inside each site's
//! transfer windows and under its bandwidth cap.
//!
//! - [`window`]: daily windows in a site's time zone (pure).
//! - [`plan`]: creating pushes (versions, sites) and running recurring ones (`--every`).
//! - [`status`]: a push's status per site (ETA over windows, deadline warning).
//! - [`clock`]: the scheduler's clock, injectable for tests.
//! - [`sim`]: a fleet push simulation over windows and caps: per-site completion, nights
//!   missed, central egress (pure).
pub mod clock;
pub mod plan;
pub mod sim;
pub mod status;
pub mod window;
