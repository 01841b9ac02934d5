"""Transfer service: endpoints (registries and their credentials), TestConnection, transfer jobs.

The servicer lives in `transfer_service.servicer`; the copy engine in `transfer_service.engine`.
Other packages reach registries through `transfer_service.endpoints.EndpointResolver`
(see docs/INTERFACES.md, "Endpoint access for the scanner and gateway").
"""
