//! Who a process is: its executable and runtime ([`process`]), its container and pod
//! ([`cgroup`], [`k8s`]), its listening sockets ([`procnet`]), and the OpenTelemetry
//! Resource that names it ([`resolver`]: `service.name`, `zone`, … from the service rules).

pub mod cgroup;
pub mod k8s;
pub mod process;
pub mod procnet;
pub mod resolver;
