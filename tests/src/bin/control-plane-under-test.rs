//! `aios-control-plane`, built alongside the test edge binary.

fn main() -> anyhow::Result<()> {
    aios_control_plane::cli::main()
}
