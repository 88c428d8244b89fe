//! `aios-edge` built with the `debug-hooks` feature, for whole-system tests.

fn main() -> anyhow::Result<()> {
    aios_edge_agent::cli::main()
}
