//! `aios`: the all-in-one binary (`aios up`).

fn main() -> anyhow::Result<()> {
    aios_up::cli::main()
}
