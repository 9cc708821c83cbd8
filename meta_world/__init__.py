"""Meta-World (MT10) in closed loop: the robot type, the experts' demonstrations, the fixture's training and
`xr0-eval-metaworld`."""
