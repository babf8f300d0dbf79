"""Ferry's device firmware: MicroPython sources, shipped in the wheel as `ferry.device`.

CPython never imports these modules; `ferry.firmware` finds this folder so that
`ferry flash` and the virtual boards work from a checkout and from an installed
wheel alike. This file is never copied to a board.
"""
