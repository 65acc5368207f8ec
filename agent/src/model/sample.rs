//! A metric sample as the agent's components publish them for `/metrics`: a name, fixed
//! labels and a value. Kept apart from any exporter so every layer can produce them.

/// One exported value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
    pub value: u64,
}
