"""gatewayd-llm: an OpenAI-compatible LLM gateway built on gatewayd's public API only.

The ``llm`` plugin (:mod:`gatewayd_llm.plugin`) answers the OpenAI endpoints of a route: it picks
a deployment of the requested model, reserves the limits, sends the request to the deployment's
upstream through ``PluginContext.forward`` (so gatewayd's balancing, deadlines, ejection and
metrics apply), falls back while no byte has reached the client, streams the answer and records
its usage exactly once. The provider kinds (:mod:`gatewayd_llm.kinds`) speak each provider's wire
format and answer in OpenAI's; :mod:`gatewayd_llm.exchange` is the contract between the two.
"""
