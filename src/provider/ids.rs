//! Local message ids in the provider's shape (temporary; replaced by the provider work).
pub fn local_message_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 10];
    rand::rng().fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!("3EB0{hex}")
}
pub fn is_well_formed(id: &str) -> bool {
    id.starts_with("3EB0")
}
