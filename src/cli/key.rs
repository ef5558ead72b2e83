//! `bootcast key show|rotate`: the central server's signing key ([`bootcast::sign`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use bootcast::sign::{SigningKey, KEY_FILE};

use super::output::Output;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Print the public half of the key that signs versions and orders (made if there is
    /// none yet): what relays pin with --upstream-key
    Show,
    /// Replace the key (the old file is kept as signing.key.retired-TIME); restart the server
    /// afterwards. Give every relay the new key first: --upstream-key OLD,NEW
    Rotate,
}

pub fn run(cmd: KeyCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    match cmd {
        KeyCmd::Show => {
            let (key, made) = SigningKey::load_or_create(data)?;
            let public = key.public().to_string();
            out.emit(
                &serde_json::json!({ "key": public, "path": data.join(KEY_FILE), "created": made }),
                || {
                    if made {
                        format!("{public}\n(made now in {})", data.join(KEY_FILE).display())
                    } else {
                        public.clone()
                    }
                },
            );
        }
        KeyCmd::Rotate => {
            let (key, old) = SigningKey::rotate(data, bootcast::time::now_unix())?;
            let public = key.public().to_string();
            out.emit(
                &serde_json::json!({ "key": public, "retired": old }),
                || {
                    format!(
                        "new signing key {public}\nrestart `bootcast serve`; relays still pinned to the old key refuse its orders until they have --upstream-key with the new one{}",
                        old.as_ref()
                            .map(|p| format!("\nold key kept as {}", p.display()))
                            .unwrap_or_default()
                    )
                },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
