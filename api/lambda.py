"""This repository's AWS Lambda entry point (handler string `api/lambda.handler`): HTTP events go
through Mangum to the same app as on Vercel; EventBridge schedules run one drain. See
`jobqueue.web.aws_lambda`."""

from __future__ import annotations

from jobqueue.web.aws_lambda import LambdaHandler

handler = LambdaHandler(registry="handlers:registry")
