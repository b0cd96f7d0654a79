//! Temporary entry point while the agent's modules land; replaced by the real one.
use clap::Parser;

#[derive(Parser)]
#[command(name = "baton-agent", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
