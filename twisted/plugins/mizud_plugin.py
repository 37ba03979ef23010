from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker("mizud", "mizud.tap", "Mizu-compatible VoIP control API, billing and SIP daemon", "mizud")
