"""What both sides of XR0 share, without torch: the command-line conventions of every `xr0-*` command
(`cli`: snake_case flags with dashed aliases, `--log_level`, a clean exit on Ctrl-C) and the wire format between a
robot and the policy server (`protocol`: msgpack with numpy arrays, the error replies and the names of bad fields).

The policy server (`xr0`) and the robot side (`xr0_client`) both import it; it imports neither, so a server
module that only parses its arguments does not load the client, and the client never loads the server.
"""
