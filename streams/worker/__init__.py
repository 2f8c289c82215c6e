"""One consumer-group replica: the faust app, the offset-guard consumer, the runtime, its service
loop and health server.
"""
