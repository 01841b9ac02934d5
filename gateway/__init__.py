"""The gateway: receives registry push events, asks the policy service which policies match,
starts transfers and keeps each policy's run history (mirror.v1.GatewayService)."""
