//! `aios` (the all-in-one `up`) as the tests run it.

fn main() -> anyhow::Result<()> {
    aios_up::cli::main()
}
