"""XR0 deployment on the model side: the policy (`policy`), its websocket server (`server`, `xr0-serve`) and a
benchmark of both. The robot side is the light package `xr0_client`."""
