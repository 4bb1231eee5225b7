fn main() {
    cairn::run();
}
