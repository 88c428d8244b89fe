//! `aios-edge`: the edge agent's binary.

fn main() -> anyhow::Result<()> {
    aios_edge_agent::cli::main()
}
