//! `cri-mesos-supervisor --pod-id ID --socket PATH --state-dir DIR [--new-pid-ns] [--ready-fd N]`
fn main() {
    cri_mesos_supervisor::main_entry()
}
