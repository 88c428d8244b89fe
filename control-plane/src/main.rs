//! `aios-control-plane`: the control plane's binary.

fn main() -> anyhow::Result<()> {
    aios_control_plane::cli::main()
}
