"""Tools built on the library: ready-made handlers (`apps`), the fault-injection
`proxy`, the `bench`mark, and the `demo`. The command line drives them."""
