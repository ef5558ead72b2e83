//! `bootcast token show`: the staff API token.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use bootcast::http::auth::{read_token, token_path, TokenError};

use super::output::Output;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Print the API token (`Authorization: Bearer TOKEN` for /api/v1)
    Show,
}

pub fn run(cmd: TokenCmd, data: &Path, out: &Output) -> Result<ExitCode> {
    match cmd {
        TokenCmd::Show => {
            let token = read_token(data)?.ok_or_else(|| TokenError::Missing {
                dir: data.to_path_buf(),
            })?;
            out.emit(
                &serde_json::json!({ "token": token, "path": token_path(data) }),
                || token.clone(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
